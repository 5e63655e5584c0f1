"""Benchmark: a day of catch-up for a counter rule with 100,000 series.

Not a test. Run with ``uv run --frozen python -m bench.catchup_large`` (``--quick``: 2,000
series and 2 hours, as CI runs it; ``--series N --hours H`` to choose; ``--profile``:
cProfile of the catch-up to stderr).

A day of one-minute windows is 1,440 windows: for 100,000 series, 144 million points in
Tempo's answers. The bridge reads them with range queries sized by points (``max_points``,
2 million by default: 20 windows per query of 100,000 series), so that no answer is
unbounded, and counts every window while writing samples only for the windows the
receiver still takes (``max_sample_age``).

This process serves Tempo's answers (Tempo 3.0.3's JSON shape: int64 as strings, the
extra bucket before ``start``), each series growing by a value of its own in every
window, and a real Prometheus takes the samples. A child process, whose time and memory
are measured, runs the bridge's engine, encoder and sender as the daemon wires them, on
a state that recorded the window before the day, its series known (as they are to a
daemon that ran before the downtime): one ``Engine.evaluate_rule`` catches up the day
while the sender runs beside it, as in the daemon, until the outbox is empty. Targets
(issue "100,000 series in a second"): <= 10 minutes, <= 1.5 GB peak RSS. The checks:
no sample dropped, and every series' total is its value times the windows of the day.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import math
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from bench.common import STAGES, Report, machine, peak_rss_mb, serve_tempo, wire

RECORD = "bench_day_cost_usd_total"
INTERVAL = 60
BY = ("span.gen_ai.request.model", "span.trace.metadata.openrouter.api_key_name")
RULES = f"""\
groups:
  - name: bench
    interval: 1m
    query_offset: 2m
    settle: []
    exemplars: false
    rules:
      - record: {RECORD}
        expr: >-
          {{ resource.service.name = "openrouter" }}
          | sum_over_time(span.gen_ai.usage.total_cost)
          by (span.gen_ai.request.model, span.trace.metadata.openrouter.api_key_name)
        kind: counter
"""


def value(i: int) -> float:
    """What series ``i`` gains in every window (binary fractions: exact sums)."""
    return (i % 255 + 1) / 256


class Answers:
    """Range answers for any ``(start, end]`` of whole windows, built per request from
    each series' labels (encoded once) and the samples of each of the 255 values."""

    def __init__(self, series: int) -> None:
        self.series = series
        self._labels = [
            json.dumps([{"key": BY[0], "value": {"stringValue": f"model-{i // 1000}"}},
                        {"key": BY[1], "value": {"stringValue": f"key-{i % 1000:04d}"}}],
                       separators=(",", ":")).encode()
            for i in range(series)
        ]

    def body(self, start: int, end: int, step: int) -> bytes:
        stamps = range(start, end + 1, step)  # the extra bucket, then the windows
        first = b'{"timestampMs":"%d"}' % (stamps[0] * 1000)
        samples = [
            b"[" + b",".join([first, *(b'{"timestampMs":"%d","value":%s}'
                                       % (stamp * 1000, repr(value(v)).encode())
                                       for stamp in stamps[1:])]) + b"]"
            for v in range(255)
        ]
        series = b",".join([b'{"labels":%s,"samples":%s}' % (labels, samples[i % 255])
                            for i, labels in enumerate(self._labels)])
        return b'{"series":[%s],"metrics":{"completedJobs":1}}' % series


async def serve(answers: Answers) -> tuple[web.AppRunner, str]:
    async def answer(request: web.Request) -> web.Response:
        start, end = int(request.query["start"]), int(request.query["end"])
        step = int(request.query.get("step", f"{INTERVAL}s").rstrip("s"))
        body = await asyncio.to_thread(answers.body, start, end, step)
        return web.Response(body=body, content_type="application/json")

    return await serve_tempo(answer, answer)


async def child(tempo_url: str, write_url: str, series: int, hours: float,
                profile: bool) -> dict[str, Any]:
    """Catch up ``hours`` of windows of a rule of ``series`` series that recorded the
    window before them."""
    from bridge.engine import rule_key
    from bridge.evaluation import Stored, Update
    from bridge.logs import configure
    from bridge.sender import encoder
    from bridge.series import TempoKey
    from bridge.totals import Total
    from bridge.windows import Limits, align_down

    configure("warning", stream=sys.stderr)
    wired = wire(Path(tempfile.mkdtemp(prefix="bench-catchup-large-")), RULES, tempo_url,
                 write_url, encode=encoder({}, 2000), limits=Limits())
    group, rule, state, metrics, sender = (wired.group, wired.rule, wired.state, wired.metrics,
                                           wired.sender)
    engine = wired.engine
    now = time.time()
    target = align_down(now - group.query_offset, INTERVAL)
    start = target - int(hours * 3600)
    key = rule_key(group, rule)
    # it ran before: its series known (a total of 0 each), so queries are sized by them
    totals: dict[TempoKey, Total] = {
        ((BY[0], f"model-{i // 1000}"), (BY[1], f"key-{i % 1000:04d}")): Total(0.0, start)
        for i in range(series)
    }
    state.commit(key, Update(start, frozenset(), {}, totals=totals),
                 after=Stored(start, totals))
    del totals
    watch = wired.stopwatch()
    profiler = cProfile.Profile() if profile else None
    wall, cpu = time.perf_counter(), time.process_time()
    if profiler:
        profiler.enable()
    sending = asyncio.create_task(sender.run())  # as in the daemon: sends while it catches up
    ok = await engine.evaluate_rule(group, rule, now)
    evaluated = time.perf_counter() - wall
    while state.outbox_samples():  # noqa: ASYNC110 (the sender has no "empty" event)
        await asyncio.sleep(0.05)
    sending.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sending
    if profiler:
        profiler.disable()
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(30)
    result: dict[str, Any] = {
        "ok": ok, "wall": time.perf_counter() - wall, "evaluate": evaluated,
        "cpu": time.process_time() - cpu, "peak_rss": peak_rss_mb(),
        "windows": (target - start) // INTERVAL,
        "queries": metrics.registry.get_sample_value(
            "tempo_bridge_tempo_queries_total", {"kind": "range"}) or 0,
        "sent": metrics.registry.get_sample_value("tempo_bridge_samples_sent_total") or 0,
        "dropped": sum(sample.value for family in metrics.registry.collect()
                       if family.name == "tempo_bridge_samples_dropped"
                       for sample in family.samples if sample.name.endswith("_total")),
        "stages": dict(watch.seconds),
    }
    stored = state.load(key)
    assert stored is not None
    result["checkpoint_ok"] = stored.checkpoint == target
    totals = {dict(k)[BY[1]] + "/" + dict(k)[BY[0]]: t.value for k, t in stored.totals.items()}
    result["series"] = len(totals)
    result["totals"] = sorted(totals.values())
    await wired.close()
    return result


async def run(series: int, hours: float, profile: bool = False) -> int:
    from tests.support.prometheus import start_prometheus

    report = Report("catchup_large")
    report.note(machine())
    windows = int(hours * 3600) // INTERVAL
    report.note(f"{series:,} series, {hours:g} h of one-minute windows: {windows:,} windows, "
                f"{series * windows:,} points in Tempo's answers")
    answers = Answers(series)
    with tempfile.TemporaryDirectory(prefix="bench-catchup-large-") as tmp, \
            start_prometheus(Path(tmp)) as prom:
        runner, url = await serve(answers)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.catchup_large", "--child", url, prom.write_url,
                str(series), str(hours), *(["--profile"] if profile else []),
                stdout=asyncio.subprocess.PIPE,
            )
            out, _ = await process.communicate()
        finally:
            await runner.cleanup()
        if process.returncode:
            report.check("the catch-up ran", False, f"child exited {process.returncode}")
            return report.exit_status()
        result = json.loads(out.decode().strip().splitlines()[-1])
    big = series >= 100_000 and hours >= 24
    report.figure("Tempo range queries", int(result["queries"]))
    report.figure("catch-up, Tempo queries to committed", result["evaluate"], "s", digits=1)
    report.figure("catch-up, wall time", result["wall"], "s", digits=1,
                  at_most=600 if big else None)
    report.figure("catch-up, CPU time", result["cpu"], "s", digits=1)
    report.figure("per window", result["wall"] / max(result["windows"], 1), "s")
    for stage, label in STAGES.items():
        seconds = result["stages"].get(stage, 0.0)
        report.figure(f"catch-up: {label}", seconds, "s", digits=1, share=seconds / result["wall"])
    report.figure("peak RSS", result["peak_rss"], "MB", digits=1,
                  at_most=1500 if big else None)
    report.figure("samples sent (windows the receiver takes)", int(result["sent"]))
    report.check("the catch-up succeeded", result["ok"] and result["checkpoint_ok"])
    report.check("no sample dropped", result["dropped"] == 0, f"{result['dropped']:.0f} dropped")
    report.check("every series has a total", result["series"] == series,
                 f"{result['series']} != {series}")
    want = sorted(value(i) * result["windows"] for i in range(series))
    report.check("every total is its value times the windows",
                 all(math.isclose(a, b, rel_tol=1e-12) for a, b in
                     zip(result["totals"], want, strict=True)))
    return report.exit_status()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2,000 series, 2 hours")
    parser.add_argument("--series", type=int, default=100_000)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--profile", action="store_true", help="cProfile the catch-up")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        tempo_url, write_url, series, hours = args.child
        result = asyncio.run(child(tempo_url, write_url, int(series), float(hours),
                                   args.profile))
        print(json.dumps(result))
        return 0
    if args.quick:
        return asyncio.run(run(2_000, 2.0))
    return asyncio.run(run(args.series, args.hours, args.profile))


if __name__ == "__main__":
    sys.exit(main())
