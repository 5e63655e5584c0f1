"""Benchmark of parsing Tempo's answers: seconds and peak memory per parser and answer size.

Not a test. Run with ``uv run --frozen python -m bench.parse`` (``--quick``: 1,000 and
10,000 series only).

Answers are made in Tempo 3.0.3's JSON shape (labels as OTLP AnyValues named as written in
``by()``, int64 as strings, a value of 0 without its ``value`` key) with the cost rule's
three labels, at 1,000, 10,000, 100,000 and 1,000,000 series, of two kinds:

* instant: one value per series, what a steady evaluation reads today;
* range: the one-window range query (buckets ``e-i`` and ``e``, see docs/performance.md)
  with two samples per series and Tempo's 100 exemplars.

Each answer is written to a file; each parser then reads it in a process of its own (so
that one parser's garbage does not count against the next) and reports the time to turn the
bytes into the client's series objects (``InstantSeries``/``RangeSeries``) and its peak
resident memory (``VmHWM``) over what the process held with the bytes read. The parsers:

* ``msgspec``: the client's parser (``bridge.tempo.parse_answer``): msgspec checks the
  bytes and splits them into series, then decodes each into typed structs and makes it a
  series object at once;
* ``json``: the client's fallback for a malformed answer (``bridge.tempo._parse_whole``):
  ``json.loads`` and the checks in Python, which word every error;
* ``buckets``: what the engine reads answers with (``bridge.tempo.parse_buckets``):
  msgspec as above, each series added to the window's bucket as it is decoded, no series
  object made (the range answer's extra leading bucket checked and dropped).

Correctness checks: the first two give the same series, the third the buckets of those
series (``bridge.tempo.buckets_of``).

Then one window read two ways, at 2,000 and 100,000 series (``--quick``: 2,000), from the
Tempo double (``tests/doubles/tempo.py``) holding two spans per series spread over the
minute, one in the window ``(e-60, e]`` and one in the minute before: the instant query
``start=e-60, end=e`` the steady state uses today, and the one-window range query
``start=e-60, end=e, step=60s``, whose answer has the bucket stamped ``e-60`` (Tempo's
extra leading bucket, to drop) and the window's, stamped ``e``, with exemplars. Figures:
answer bytes, the client's parse time (median of 5), and the exemplars in the window's
bucket. A correctness check: the range answer's window has the instant answer's values.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from bench.common import ROOT, Report, machine, peak_rss_mb, proc_status_mb

ONE_WINDOW_SIZES = (2_000, 100_000)

Kind = Literal["instant", "range"]
SIZES = (1_000, 10_000, 100_000, 1_000_000)
QUICK_SIZES = (1_000, 10_000)
PARSERS = ("msgspec", "json", "buckets")
BY = ("span.gen_ai.request.model", "span.gen_ai.provider.name",
      "span.trace.metadata.openrouter.api_key_name")
WINDOW_END_MS = 1_795_770_000_000
STEP_MS = 60_000
EXEMPLARS = 100


def answer(kind: Kind, series: int) -> bytes:
    """A Tempo answer of ``series`` series of the cost rule's shape."""
    items = []
    for i in range(series):
        values = (f"vendor-{i // 1000 % 10}/model-{i // 1000}-instruct",
                  f"provider-{i // 1000 % 25}", f"team-{i % 1000:04d}-production-key")
        item: dict[str, Any] = {
            "labels": [{"key": k, "value": {"stringValue": v}} for k, v in zip(BY, values,
                                                                                strict=True)]
        }
        value = round(0.000125 * (i % 997 + 1), 9)
        if kind == "instant":
            if i % 50:  # Tempo leaves the value of 0 out
                item["value"] = value
        else:
            window: dict[str, Any] = {"timestampMs": str(WINDOW_END_MS)}
            if i % 50:
                window["value"] = value
            item["samples"] = [{"timestampMs": str(WINDOW_END_MS - STEP_MS)}, window]
            if i < EXEMPLARS:
                item["exemplars"] = [{
                    "labels": [
                        {"key": "trace:id", "value": {"stringValue": f"{i + 1:031x}"}},
                        {"key": "resource.service.name", "value": {"stringValue": "openrouter"}},
                        {"key": BY[0], "value": {"stringValue": values[0]}},
                        {"key": "span.gen_ai.usage.total_cost", "value": {"doubleValue": value}},
                    ],
                    "value": value,
                    "timestampMs": str(WINDOW_END_MS - 30_000 + i),
                }]
        items.append(item)
    metrics = {"inspectedSpans": str(series * 3), "completedJobs": 1, "totalJobs": 1}
    return json.dumps({"series": items, "metrics": metrics}, separators=(",", ":")).encode()


def digest(result: list[Any]) -> str:
    """A short fingerprint of parsed series, to compare parsers."""
    import hashlib

    text = repr([(s.labels, getattr(s, "value", None),
                  list(getattr(s, "samples", ())), list(getattr(s, "exemplars", ())))
                 for s in result])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def child(path: str, kind: Kind, parser: str) -> None:
    """Parse one answer file; print seconds, memory and a digest as JSON."""
    from bridge import tempo

    body = Path(path).read_bytes()
    gc.collect()
    before = proc_status_mb()["VmRSS"]
    query = "{ } | sum_over_time(span.gen_ai.usage.total_cost) by (...)"
    started = time.perf_counter()
    if parser == "buckets":
        buckets = tempo.parse_buckets(body, query, kind, [WINDOW_END_MS])
        seconds, peak = time.perf_counter() - started, peak_rss_mb()
        series = tempo.parse_answer(body, query, kind)
        same = repr(buckets) == repr(tempo.buckets_of(series, [WINDOW_END_MS]))
        print(json.dumps({"seconds": seconds, "before": before, "peak": peak,
                          "series": len(series), "digest": digest(series) if same else ""}))
        return
    if parser == "msgspec":
        result: list[Any] = tempo.parse_answer(body, query, kind)
    else:
        result = tempo._parse_whole(body.decode(), query, kind)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "before": before, "peak": peak_rss_mb(),
                      "series": len(result), "digest": digest(result)}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000 and 10,000 series only")
    parser.add_argument("--child", nargs=3, metavar=("FILE", "KIND", "PARSER"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    report = Report("parse")
    report.note(machine())
    report.note("seconds: bytes to series objects (buckets: to the window's values); peak RSS: "
                "VmHWM of the parsing process, and in brackets what the parse added to the "
                "bytes held")
    agree = True
    with tempfile.TemporaryDirectory(prefix="bench-parse-") as tmp:
        for kind in ("instant", "range"):
            for size in QUICK_SIZES if args.quick else SIZES:
                path = Path(tmp) / f"{kind}-{size}.json"
                path.write_bytes(answer(kind, size))
                report.note(f"{kind}, {size:,} series: {path.stat().st_size / 1e6:.1f} MB of JSON")
                digests = set()
                for name in PARSERS:
                    run = subprocess.run(
                        [sys.executable, "-m", "bench.parse", "--child", str(path), kind, name],
                        cwd=ROOT, capture_output=True, text=True, check=True,
                    )
                    got = json.loads(run.stdout)
                    digests.add((got["series"], got["digest"]))
                    label = f"{kind} {size:,}: {name}"
                    report.figure(label, got["seconds"], "s")
                    report.figure(f"{label} peak RSS", got["peak"], "MB", digits=0)
                    report.note(f"{label}: the parse added {got['peak'] - got['before']:,.0f} MB "
                                f"to the {got['before']:,.0f} MB held with the bytes")
                agree &= len(digests) == 1 and next(iter(digests))[0] == size
                path.unlink()
    report.check("every parser gives the same series (buckets: their buckets)", agree)
    one_window(report, ONE_WINDOW_SIZES[:1] if args.quick else ONE_WINDOW_SIZES)
    return report.exit_status()


def one_window(report: Report, sizes: tuple[int, ...]) -> None:
    """The instant query of a window against its one-window range query."""
    import statistics

    from bridge import tempo
    from tests.doubles.tempo import Span, TempoDouble

    end = WINDOW_END_MS // 1000
    query = ("{ } | sum_over_time(span.gen_ai.usage.total_cost) by (" + ", ".join(BY) + ")")
    same = True
    for size in sizes:
        spans = []
        for i in range(size):
            attributes: dict[str, str | float] = {
                BY[0].removeprefix("span."): f"vendor-{i // 1000 % 10}/model-{i // 1000}",
                BY[1].removeprefix("span."): f"provider-{i // 1000 % 25}",
                BY[2].removeprefix("span."): f"team-{i % 1000:04d}-key",
                "gen_ai.usage.total_cost": 0.000125 * (i % 997 + 1),
            }
            offset = 1 + i * 60 * 10**9 // size  # spread over the minute
            for minute in (end - 120, end - 60):  # the minute before, the window
                spans.append(Span(start_ns=minute * 10**9 + offset, attributes=attributes))
        double = TempoDouble(spans, clock=lambda: end + 120.0)
        instant = double.handle("/api/metrics/query",
                                {"q": query, "start": str(end - 60), "end": str(end)}).body
        ranged = double.handle("/api/metrics/query_range", {
            "q": query, "start": str(end - 60), "end": str(end), "step": "60s"}).body
        results: dict[str, list[Any]] = {}
        for kind, body in (("instant", instant), ("range", ranged)):
            times = []
            for _ in range(5):
                started = time.perf_counter()
                results[kind] = tempo.parse_answer(body, query, kind)  # type: ignore[call-overload]
                times.append(time.perf_counter() - started)
            label = f"one window {size:,}: {kind}"
            report.figure(f"{label} answer bytes", len(body), "B")
            report.figure(f"{label} parse", statistics.median(times), "s")
        in_window = sum(1 for s in results["range"] for e in s.exemplars
                        if e.ts_ms > (end - 60) * 1000)
        report.figure(f"one window {size:,}: exemplars in the window", in_window)
        values = {s.labels: s.value for s in results["instant"]}
        windowed = {s.labels: dict(s.samples).get(end * 1000)
                    for s in results["range"]}
        same &= values == windowed
    report.check("the range answer's window has the instant answer's values", same)


if __name__ == "__main__":
    sys.exit(main())
