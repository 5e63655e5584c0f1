"""Benchmark of remote-write encoding: 100,000 series with one sample each.

Not a test. Run with ``uv run --frozen python -m bench.encode`` (``--quick``: 2,000
series, 2 runs; ``--profile`` prints the hottest functions of one run under cProfile).
For comparison it also times the same request built through the generated protobuf API.
Target: 500,000 samples/s for ``encode_write_request``.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import cramjam

from bench.common import Report, machine
from bridge.prompb import remote_pb2
from bridge.remote_write import (
    BatchEncoder,
    Series,
    encode_write_request,
    serialize_write_request,
)
from bridge.series import Sample


def make_series(count: int, timestamp_ms: int) -> list[Series]:
    """``count`` distinct series shaped like the OpenRouter cost rules' output."""
    series: list[Series] = []
    for i in range(count):
        labels = (
            ("__name__", "openrouter_cost_usd_total"),
            ("api_key_name", f"team-{i % 1000:04d}-production-key"),
            ("env", "production"),
            ("model", f"vendor-{i // 1000 % 10}/model-{i // 1000}-instruct"),
            ("provider", f"provider-{i // 1000 % 25}"),
            ("source", "openrouter"),
        )
        series.append((labels, [(timestamp_ms, 0.000125 * (i + 1))]))
    return series


def encode_with_protobuf_api(series: Sequence[Series]) -> bytes:
    """The same request built with the generated code: the reference, and the slow way."""
    request = remote_pb2.WriteRequest()
    add_series = request.timeseries.add
    for labels, samples, *_ in series:
        ts = add_series()
        add_label = ts.labels.add
        for name, value in labels:
            add_label(name=name, value=value)
        add_sample = ts.samples.add
        for timestamp, sample_value in samples:
            add_sample(timestamp=timestamp, value=sample_value)
    return bytes(cramjam.snappy.compress_raw(request.SerializeToString()))


def steady_samples(series: Sequence[Series]) -> tuple[BatchEncoder, list[Sample]]:
    """The daemon's encoder (requests of 2,000 samples, as by default) having written
    ``series`` once, and their samples: what a steady evaluation gives it. Checked to
    write the bytes ``encode_write_request`` writes."""
    encoder = BatchEncoder({}, 2_000)
    samples: list[Sample] = [(labels, *points[0]) for labels, points, *_ in series]
    written = b"".join(bytes(cramjam.snappy.decompress_raw(batch.body))
                       for batch in encoder(samples, {}))
    if written != serialize_write_request(series):
        raise AssertionError("BatchEncoder wrote other bytes than encode_write_request")
    return encoder, samples


def measure(report: Report, name: str, encode: Callable[[Sequence[Any]], object],
            series: Sequence[Any], repeat: int, target: float | None = None) -> None:
    rates = []
    for _ in range(repeat):
        start = time.perf_counter()
        encode(series)
        rates.append(len(series) / (time.perf_counter() - start))
    report.note(f"{name}: min {min(rates):,.0f}, max {max(rates):,.0f} samples/s, "
                f"{repeat} runs")
    report.figure(f"{name}, median", round(statistics.median(rates)), "samples/s",
                  at_least=target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2,000 series, 2 runs")
    parser.add_argument("--series", type=int)
    parser.add_argument("--repeat", type=int)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    count = args.series or (2_000 if args.quick else 100_000)
    repeat = args.repeat or (2 if args.quick else 7)

    report = Report("encode")
    report.note(machine())
    series = make_series(count, int(time.time()) * 1000)
    raw = serialize_write_request(series)
    body = encode_write_request(series)
    report.check("same bytes as the protobuf API", body == encode_with_protobuf_api(series))
    report.note(f"{count:,} series x 1 sample")
    report.figure("protobuf size", len(raw), "bytes")
    report.figure("snappy size", len(body), "bytes")
    report.figure("compression", len(raw) / len(body), "x", digits=1)

    measure(report, "encode_write_request", encode_write_request, series, repeat, 500_000)
    measure(report, "protobuf API + snappy", encode_with_protobuf_api, series,
            max(1, repeat // 2))
    encoder, samples = steady_samples(series)
    measure(report, "the daemon's BatchEncoder, labels remembered (a steady evaluation)",
            partial(encoder, exemplars={}), samples, repeat)

    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(encode_write_request, series)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(8)
    return report.exit_status()


if __name__ == "__main__":
    sys.exit(main())
