"""The Tempo double (``tests/doubles/tempo.py``) served over HTTP for the benchmarks.

``python -m bench.tempo_server --start T --seconds N --mean-gap G --seed S`` holds the
spans ``bench.common.make_spans`` makes from those arguments, prints its base URL on one
line, and serves until SIGTERM. The benchmarks start it with ``bench.common.TempoServer``.

Two additions to the double, neither of which changes an answer:

* a time index: the double scans every span it holds for each query, which makes a day
  of one-query-per-window evaluation take hours; here a query only looks at the spans
  that start in its time range (with a step's margin for a range query's extra bucket);
* ``GET /bench/queries``: the metrics queries answered so far, as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Mapping

from typing_extensions import override

from bench.common import SpanSpec, spans_between
from tests.doubles.tempo import (
    NANOS_PER_SECOND,
    Response,
    Span,
    TempoDouble,
    _parse_step,
    parse_timestamp,
)

QUERY_PATHS = {"/api/metrics/query": "instant", "/api/metrics/query_range": "range"}


class IndexedTempoDouble(TempoDouble):
    """The Tempo double, looking only at the spans a query's time range can hold."""

    def __init__(self, spans: list[Span], *, query_end_cutoff: float) -> None:
        super().__init__(spans, query_end_cutoff=query_end_cutoff)
        self._range_ns: tuple[int, int] | None = None
        self._sorted = self.spans  # add_spans sorts them by start; none are added later
        self.answered: list[dict[str, str]] = []

    @override
    def _answer(
        self, path: str, params: Mapping[str, str], headers: Mapping[str, str]
    ) -> Response:
        if path == "/bench/queries":
            return Response.json(self.answered)
        kind = QUERY_PATHS.get(path)
        if kind is not None:
            self.answered.append(
                {"kind": kind, "start": params.get("start", ""), "end": params.get("end", "")}
            )
        self._range_ns = _time_range(kind, params)
        try:
            return super()._answer(path, params, headers)
        finally:
            self._range_ns = None

    @override
    def _visible_spans(self, headers: Mapping[str, str]) -> list[Span]:
        visible = super()._visible_spans(headers)
        if self._range_ns is None or not visible:
            return visible
        return list(spans_between(self._sorted, *self._range_ns))


def _time_range(kind: str | None, params: Mapping[str, str]) -> tuple[int, int] | None:
    """``[low, high]`` ns holding every span the query can count; None: look at all."""
    try:
        start = parse_timestamp(params["start"])
        end = parse_timestamp(params["end"])
        # A range query's extra leading bucket starts a step before its aligned start.
        margin = 2 * _parse_step(params["step"]) if kind == "range" else 0
    except Exception:  # a bad request: the double answers it, looking at every span
        return None
    return start - margin - NANOS_PER_SECOND, end + NANOS_PER_SECOND


async def serve(spec: SpanSpec, query_end_cutoff: float) -> None:
    double = IndexedTempoDouble(spec.spans(), query_end_cutoff=query_end_cutoff)
    url = await double.start()
    print(url, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await double.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--start", type=float, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--mean-gap", type=float, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--query-end-cutoff", type=float, default=30.0)
    args = parser.parse_args(argv)
    spec = SpanSpec(args.start, args.seconds, args.mean_gap, args.seed)
    asyncio.run(serve(spec, args.query_end_cutoff))


if __name__ == "__main__":
    main()
