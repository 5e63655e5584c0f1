"""Benchmark: one evaluation of a counter rule with 1,000 to 1,000,000 series, end to end.

Not a test. Run with ``uv run --frozen python -m bench.evaluate`` (``--quick``: 1,000 and
2,000 series, as CI runs it; ``--sizes 100000`` and ``--idle-sizes 100000``: the sizes to
run; ``--profile``: cProfile of the steady evaluation on both threads, the event loop's and
the worker's, printed by the child process).

This process starts a real Prometheus and serves prebuilt Tempo answers over HTTP, shaped
as Tempo 3.0.3 answers (labels as OTLP AnyValues named as written in ``by()``, int64 as
strings, a value of 0 without its ``value`` key; range answers with the extra bucket before
the window and exemplars). For each size, a child process, whose time and memory are what
is measured, runs the bridge's own engine, encoder and sender on a fresh state, as the
daemon wires them: ``Engine.evaluate_rule`` (query Tempo and parse the answer, evaluate,
encode the requests, commit the state and the outbox in one transaction, hand the
requests to the sender) then ``Sender.drain`` (post to Prometheus, remove what it took).

Evaluations run one window apart: the first meets every series new (each also written as
its 0 at the previous window end); the next ones (five; three at 1,000,000 series; two in
the quick run) are the steady state, and their median (by wall time) gives the steady
figures, since this machine's speed changes from one minute to the next. With exemplars
on (the default), a lone window is read with a one-window range query. The
targets (issue "100,000 series in a second"): the steady evaluation of 100,000 series in
<= 1.0 s of wall time and <= 1.0 s of the child's CPU; the first in <= 2.0 s; 1,000,000
series in <= 10 s and <= 1.5 GB peak RSS; time and memory per series flat from 10,000 up.
The full run draws the curve to ``docs/evaluate-scaling.png``.

Then a restart: a new child process opens the same state and evaluates the next window,
as the daemon does after a restart (the state read back from disk, every cache cold): the
time to open the state, that evaluation's time and the process's peak RSS.

The mostly idle run is the realistic steady state: 100,000 series in the state, one in 20
still growing and the others idle (``idle_after: 2m``): five evaluations, the whole answer
twice, then only the growing series; the last is measured, when the idle ones are no
longer written.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from bench.common import ROOT, STAGES, Report, machine, peak_rss_mb, serve_tempo, wire

RECORD = "bench_cost_usd_total"
RULES = f"""\
groups:
  - name: bench
    interval: 1m
    query_offset: 2m
    settle: [10m, 1h]
    labels: {{source: openrouter}}
    rules:
      - record: {RECORD}
        expr: >-
          {{ resource.service.name = "openrouter" && name = "LLM Generation" }}
          | sum_over_time(span.gen_ai.usage.total_cost)
          by (span.gen_ai.request.model, span.gen_ai.provider.name,
              span.trace.metadata.openrouter.api_key_name)
        kind: counter
        rename:
          gen_ai_request_model: model
          gen_ai_provider_name: provider
          trace_metadata_openrouter_api_key_name: api_key_name
"""
BY = ("span.gen_ai.request.model", "span.gen_ai.provider.name",
      "span.trace.metadata.openrouter.api_key_name")
FULL_SIZES = (1_000, 10_000, 100_000, 1_000_000)
QUICK_SIZES = (1_000, 2_000)
IDLE_SIZES = (100_000,)
QUICK_IDLE_SIZES = (2_000,)
PLOT = ROOT / "docs" / "evaluate-scaling.png"



def _series_labels(i: int) -> list[dict[str, Any]]:
    values = (f"vendor-{i // 1000 % 10}/model-{i // 1000}-instruct",
              f"provider-{i // 1000 % 25}", f"team-{i % 1000:04d}-production-key")
    return [{"key": key, "value": {"stringValue": value}}
            for key, value in zip(BY, values, strict=True)]


def _value(i: int) -> float:
    return round(0.000125 * (i % 997 + 1), 9)


def tempo_answers(series: int, every: int = 1) -> tuple[bytes, bytes]:
    """An instant answer and a one-window range answer (a template: see ``range_body``)
    with ``series`` series of the OpenRouter cost rule's shape (``every``: only every
    that many of them), as Tempo 3.0.3 writes them: a value of 0 without its ``value``
    key; in the range answer, the extra bucket before the window, and exemplars (trace
    IDs) for the first 50 series (Tempo's ``max_exemplars`` of 100 per query, half of
    them in the window)."""
    instant, ranged = [], []
    for i in range(0, series, every):
        labels = _series_labels(i)
        item: dict[str, Any] = {"labels": labels}
        if i % 50:  # Tempo leaves the value of 0 out
            item["value"] = _value(i)
        instant.append(item)
        one: dict[str, Any] = {
            "labels": labels,
            "samples": [{"timestampMs": "__START__"},
                        {"timestampMs": "__END__", "value": _value(i)}],
        }
        if i < 50:
            one["exemplars"] = [{
                "labels": [{"key": "trace:id", "value": {"stringValue": f"{i + 1:032x}"}}],
                "value": _value(i), "timestampMs": "__SPAN__",
            }]
        ranged.append(one)
    metrics = {"inspectedSpans": str(series * 3), "completedJobs": 1, "totalJobs": 1}
    return (json.dumps({"series": instant, "metrics": metrics}, separators=(",", ":")).encode(),
            json.dumps({"series": ranged, "metrics": metrics}, separators=(",", ":")).encode())


def range_body(template: bytes, start: int, end: int) -> bytes:
    """The range answer for the window ``(start, end]``: buckets stamped ``start`` (the
    extra one) and ``end``, spans a second before the end."""
    return (template.replace(b'"__START__"', b'"%d"' % (start * 1000))
            .replace(b'"__END__"', b'"%d"' % (end * 1000))
            .replace(b'"__SPAN__"', b'"%d"' % (end * 1000 - 1000)))


# -- the child: the measured process ----------------------------------------------------------


IDLE_EVERY = 20
"""In the mostly idle run, one series in this many keeps growing after two windows."""
IDLE_RULES = RULES.replace("    labels:", "    idle_after: 2m\n    labels:", 1)
"""The rules of the mostly idle run: series idle for two windows are no longer written."""


def clocks(now: float, idle: bool, steady: int = 1) -> list[float]:
    """The evaluation times, one window apart: the first and ``steady`` more, or five for
    the mostly idle run (the whole answer twice, then only the series that keep growing:
    the others are written once more, then end with a stale marker, then are idle)."""
    return [now - 60 * n for n in reversed(range(5 if idle else 1 + steady))]


def steady_runs(series: int, quick: bool) -> int:
    """How many steady evaluations to run: the machine's speed changes from one minute
    to the next, so the figures are those of the median one."""
    return 2 if quick else 3 if series >= 1_000_000 else 5


def window_end(clock: float) -> int:
    """The end of the window an evaluation at ``clock`` records (1m windows, 2m offset)."""
    return int(clock - 120) // 60 * 60


def cutover(now: float) -> int:
    """The first window end whose answer, in the mostly idle run, holds only the series
    that keep growing: that of the third evaluation."""
    return window_end(clocks(now, True)[2])


async def child(tempo_url: str, write_url: str, profile: bool, now: float,
                idle: bool, steady_count: int, directory: Path | None = None) -> dict[str, Any]:
    """Evaluations and drains one window apart (see ``clocks``): their time, stages and
    memory. With ``directory``, the state there (a restart), else a new one."""
    import bridge.daemon  # noqa: F401 (every module wire uses: not timed as the opening)
    from bridge.engine import rule_key
    from bridge.logs import configure

    configure("warning", stream=sys.stderr)
    directory = directory or Path(tempfile.mkdtemp(prefix="bench-evaluate-"))
    opening = time.perf_counter()
    wired = wire(directory, IDLE_RULES if idle else RULES, tempo_url, write_url)
    opening = time.perf_counter() - opening
    group, rule, engine, state, metrics = (wired.group, wired.rule, wired.engine, wired.state,
                                           wired.metrics)
    sender = wired.sender

    watch = wired.stopwatch()

    result: dict[str, Any] = {"evaluations": [], "rss_before": peak_rss_mb(),
                              "directory": str(directory), "opening": opening}
    # one profiler on the loop's thread, one on the worker's: a profiler sees its own thread
    profiler = cProfile.Profile() if profile else None
    on_worker = cProfile.Profile() if profile else None
    for clock in clocks(now, idle, steady_count):
        steady = clock == now
        watch.seconds.clear()
        watch.resident.clear()
        sent_before = metrics.registry.get_sample_value("tempo_bridge_samples_sent_total") or 0
        wall, cpu = time.perf_counter(), time.process_time()
        if profiler and on_worker and steady:
            await wired.worker.run(on_worker.enable)
            profiler.enable()
        with watch.sampling():
            ok = await engine.evaluate_rule(group, rule, clock)
            await sender.drain()
        if profiler and on_worker and steady:
            profiler.disable()
            await wired.worker.run(on_worker.disable)
        sent = (metrics.registry.get_sample_value("tempo_bridge_samples_sent_total") or 0)
        result["evaluations"].append({
            "ok": ok, "wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
            "stages": dict(watch.seconds), "resident": dict(watch.resident),
            "samples": int(sent - sent_before),
            "outbox": state.outbox_samples(), "peak_rss": peak_rss_mb(),
        })
    stored = state.load(rule_key(group, rule))
    result["series"] = len(stored.totals) if stored else 0
    result["peak_rss"] = peak_rss_mb()
    await wired.close()
    if profiler and on_worker:
        for order, lines in (("tottime", 45), ("cumulative", 60)):
            stats = pstats.Stats(profiler, stream=sys.stderr).add(on_worker)
            stats.sort_stats(order).print_stats(lines)
    return result


# -- the parent: Tempo's answer, Prometheus, the figures ----------------------------------------


Answers = tuple[bytes, bytes]
"""An instant answer and a range answer template (see ``tempo_answers``)."""


async def serve_answers(answers: Answers, later: Answers | None = None,
                        from_end: int = 0, ends: Sequence[int] = (),
                        window: int = 60) -> tuple[web.AppRunner, str]:
    """Serve ``answers`` (the range answer stamped with the window asked for), and
    ``later`` instead for windows ending at ``from_end`` or after. The range answers of
    the windows of ``window`` seconds ending at ``ends`` are stamped beforehand, so that
    the time the bridge waits for an answer is not spent making it (0.1-0.2 s at 100,000
    series)."""

    def pick(end: int) -> Answers:
        return later if later and end >= from_end else answers

    stamped = {(end - window, end): range_body(pick(end)[1], end - window, end)
               for end in ends}

    async def answer_instant(request: web.Request) -> web.Response:
        return web.Response(body=pick(int(request.query["end"]))[0],
                            content_type="application/json")

    async def answer_range(request: web.Request) -> web.Response:
        start, end = int(request.query["start"]), int(request.query["end"])
        body = stamped.pop((start, end), None) or range_body(pick(end)[1], start, end)
        return web.Response(body=body, content_type="application/json")

    return await serve_tempo(answer_instant, answer_range)


async def run_child(series: int, profile: bool, prom: Any, idle: bool,
                    steady: int = 1) -> dict[str, Any] | None:
    """The child's result for ``series`` series (None if it failed), served the whole
    answer or, in the mostly idle run, from the third window on only the series that keep
    growing."""
    now = time.time()
    answers = tempo_answers(series)
    later = tempo_answers(series, IDLE_EVERY) if idle else None
    ends = [window_end(clock) for clock in clocks(now, idle, steady)]
    if not idle:  # then a restart: the next window, in a new process on the same state
        ends.append(window_end(now + 60))
    runner, url = await serve_answers(answers, later, cutover(now), ends)

    async def run(*args: str) -> dict[str, Any] | None:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.evaluate", "--child", url, prom.write_url, *args,
            *(["--idle"] if idle else []), *(["--profile"] if profile else []),
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await process.communicate()
        return None if process.returncode else json.loads(out.decode().strip().splitlines()[-1])

    result = None
    try:
        result = await run(repr(now), "--steady", str(steady))
        if result is not None and not idle:
            result["restart"] = await run(repr(now + 60), "--steady", "0",
                                          "--state", result["directory"])
    finally:
        await runner.cleanup()
        if result is not None:
            shutil.rmtree(result["directory"], ignore_errors=True)
    if result is None:
        return None
    result["answer_bytes"] = [len(answers[1]), len(answers[0])]
    result["steady_end"] = window_end(now)
    return result


async def measure(series: int, profile: bool, report: Report, prom: Any,
                  steady_count: int) -> dict[str, Any] | None:
    """Run the child on ``series`` series (the first evaluation and ``steady_count``
    steady ones); report its figures, those of the median steady evaluation; its result,
    with that one as ``steady``."""
    name = f"{series:,} series"
    result = await run_child(series, profile, prom, idle=False, steady=steady_count)
    if result is None:
        report.check(f"{name}: the evaluation ran", False, "the child failed")
        return None
    # at the steady window's end: a big run can end more than 5 minutes (the lookback) later
    stored = prom.query(f"count({RECORD})", time=result["steady_end"], timeout=120)
    in_prometheus = int(stored[0]["value"][1]) if stored else 0
    ranged, instant = result["answer_bytes"]
    report.note(f"{name}: Tempo's answer is {ranged / 1e6:.1f} MB of JSON for a "
                f"one-window range query ({instant / 1e6:.1f} MB for an instant one)")
    first, *steadies = result["evaluations"]
    steady = result["steady"] = sorted(steadies, key=lambda e: e["wall"])[len(steadies) // 2]
    walls, cpus = [e["wall"] for e in steadies], [e["cpu"] for e in steadies]
    report.note(f"{name}: {len(steadies)} steady evaluations: wall {min(walls):.3f} to "
                f"{max(walls):.3f} s, CPU {min(cpus):.3f} to {max(cpus):.3f} s; the median "
                f"one (by wall time) below")
    big = series == 100_000
    for when, evaluation in (("first", first), ("steady", steady)):
        wall, cpu = evaluation["wall"], evaluation["cpu"]
        for stage, label in STAGES.items():
            seconds = evaluation["stages"].get(stage, 0.0)
            report.figure(f"{name}: {when}: {label}", seconds, "s", share=seconds / wall)
        wall_target = (1.0 if when == "steady" else 2.0) if big else (
            10.0 if series == 1_000_000 else None)
        report.figure(f"{name}: {when}: wall time", wall, "s", at_most=wall_target)
        report.figure(f"{name}: {when}: CPU time", cpu, "s",
                      at_most=1.0 if big and when == "steady" else None)
        report.figure(f"{name}: {when}: per series", wall / series * 1e6, "us", digits=2)
        report.note(f"{name}: {when}: " + highest_resident(evaluation["resident"]))
    report.figure(f"{name}: peak RSS", result["peak_rss"], "MB", digits=1,
                  at_most=1500 if series == 1_000_000 else None)
    added = result["peak_rss"] - result["rss_before"]
    report.figure(f"{name}: peak RSS above the start, per series", added / series * 1000, "KB",
                  digits=2)
    report.check(f"{name}: every evaluation succeeded",
                 all(e["ok"] for e in result["evaluations"]))
    report.check(f"{name}: every stage was timed", all(
        e["stages"].get(stage, 0) > 0 for e in result["evaluations"]
        for stage in ("tempo", "evaluate", "encode", "commit", "send")))
    report.check(f"{name}: every series has a total", result["series"] == series,
                 f"{result['series']} != {series}")
    report.check(f"{name}: every sample was sent",
                 first["samples"] == 2 * series
                 and all(e["samples"] == series and e["outbox"] == 0 for e in steadies),
                 f"{first['samples']}, {[e['samples'] for e in steadies]}")
    report.check(f"{name}: Prometheus holds every series", in_prometheus >= series,
                 f"{in_prometheus} < {series}")
    restarted(name, series, result.get("restart"), report)
    return result


def highest_resident(resident: Mapping[str, float]) -> str:
    """The most resident memory sampled in each stage of an evaluation, highest first."""
    ranked = sorted(resident.items(), key=lambda item: -item[1])
    return "resident memory, the most in each stage: " + ", ".join(
        f"{stage} {mb:,.0f} MB" for stage, mb in ranked)


def restarted(name: str, series: int, result: dict[str, Any] | None, report: Report) -> None:
    """Report the evaluation of the next window by a new process on the same state: what
    the daemon does after a restart (the state read back, every cache cold)."""
    if result is None:
        report.check(f"{name}: after a restart: the evaluation ran", False, "the child failed")
        return
    (evaluation,) = result["evaluations"]
    report.figure(f"{name}: after a restart: opening the state", result["opening"], "s")
    report.figure(f"{name}: after a restart: first evaluation: wall time", evaluation["wall"],
                  "s")
    report.figure(f"{name}: after a restart: first evaluation: CPU time", evaluation["cpu"],
                  "s")
    report.figure(f"{name}: after a restart: peak RSS", result["peak_rss"], "MB", digits=1,
                  at_most=1500 if series == 1_000_000 else None)
    report.note(f"{name}: after a restart: " + highest_resident(evaluation["resident"]))
    report.check(f"{name}: after a restart: the evaluation succeeded, every series written",
                 evaluation["ok"] and evaluation["samples"] == series
                 and evaluation["outbox"] == 0 and result["series"] == series,
                 f"{evaluation['samples']} samples, {result['series']} totals")


async def measure_idle(series: int, profile: bool, report: Report, prom: Any) -> None:
    """The realistic steady state: ``series`` series in the state, one in ``IDLE_EVERY``
    still growing, the others idle (no longer written, see ``idle_after``)."""
    name = f"{series:,} series, 1 in {IDLE_EVERY} growing"
    result = await run_child(series, profile, prom, idle=True)
    if result is None:
        report.check(f"{name}: the evaluations ran", False, "the child failed")
        return
    *_, ending, steady = result["evaluations"]
    for stage, label in STAGES.items():
        seconds = steady["stages"].get(stage, 0.0)
        report.figure(f"{name}: steady: {label}", seconds, "s", share=seconds / steady["wall"])
    report.figure(f"{name}: steady: wall time", steady["wall"], "s")
    report.figure(f"{name}: steady: CPU time", steady["cpu"], "s")
    report.figure(f"{name}: steady: samples written", steady["samples"])
    report.figure(f"{name}: the window the others end: wall time", ending["wall"], "s")
    growing = len(range(0, series, IDLE_EVERY))  # all grow in range answers: tempo_answers
    report.check(f"{name}: every evaluation succeeded",
                 all(e["ok"] for e in result["evaluations"]))
    report.check(f"{name}: only the growing series are written",
                 steady["samples"] == growing and steady["outbox"] == 0,
                 f"{steady['samples']} != {growing}")
    report.check(f"{name}: every series keeps its total", result["series"] == series,
                 f"{result['series']} != {series}")


def plot(results: dict[int, dict[str, Any]], path: Path) -> None:
    """Time and peak memory per series against the number of series, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(results)
    fig, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    for when, style in (("first", "o--"), ("steady", "o-")):
        runs = [results[n]["evaluations"][0] if when == "first" else results[n]["steady"]
                for n in sizes]
        time_axis.plot(sizes, [r["wall"] / n * 1e6 for r, n in zip(runs, sizes, strict=True)],
                       style, label=f"{when} evaluation, wall")
        time_axis.plot(sizes, [r["cpu"] / n * 1e6 for r, n in zip(runs, sizes, strict=True)],
                       style.replace("o", "s"), label=f"{when} evaluation, CPU", alpha=0.6)
    time_axis.axhline(10, color="grey", linestyle=":", label="1.0 s per 100,000 series")
    memory_axis.plot(sizes, [(results[n]["peak_rss"] - results[n]["rss_before"]) / n * 1000
                             for n in sizes], "o-", label="peak RSS above the start")
    memory_axis.axhline(1.5, color="grey", linestyle=":", label="1.5 GB per 1,000,000 series")
    for axis, unit in ((time_axis, "µs per series"), (memory_axis, "KB per series")):
        axis.set_xscale("log")
        axis.set_xlabel("series in the rule's answer")
        axis.set_ylabel(unit)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    time_axis.set_title("One evaluation, end to end")
    memory_axis.set_title("Memory")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


async def run(sizes: tuple[int, ...], idle_sizes: tuple[int, ...], profile: bool,
              plot_to: Path | None, quick: bool) -> int:
    from tests.support.prometheus import start_prometheus

    report = Report("evaluate")
    report.note(machine())
    results: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-evaluate-") as tmp:
        for series in sizes:
            # a Prometheus per size: each starts with no series at all
            with start_prometheus(Path(tmp) / str(series)) as prom:
                result = await measure(series, profile, report, prom,
                                       steady_runs(series, quick))
            if result is not None:
                results[series] = result
        for series in idle_sizes:
            with start_prometheus(Path(tmp) / f"idle-{series}") as prom:
                await measure_idle(series, profile, report, prom)
        if len(results) > 1:
            # the quick run draws it too, where it is thrown away: the drawing is tested
            path = plot_to or Path(tmp) / PLOT.name
            plot(results, path)
            report.check("the curve is drawn", path.stat().st_size > 10_000)
            if plot_to is not None:
                report.note(f"curve drawn to {plot_to}")
    return report.exit_status()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"{', '.join(f'{n:,}' for n in QUICK_SIZES)} series only")
    parser.add_argument("--sizes", help="comma-separated numbers of series")
    parser.add_argument("--profile", action="store_true", help="cProfile the steady evaluation")
    parser.add_argument("--plot", type=Path, help=f"where to draw the curve (full run: {PLOT})")
    parser.add_argument("--idle-sizes",
                        help="comma-separated numbers of series for the mostly idle run")
    parser.add_argument("--child", nargs=3, metavar=("TEMPO_URL", "WRITE_URL", "NOW"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--idle", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--steady", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        tempo_url, write_url, now = args.child
        result = asyncio.run(child(tempo_url, write_url, args.profile, float(now), args.idle,
                                   args.steady, args.state))
        print(json.dumps(result))
        return 0

    def numbers(text: str | None, default: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(int(n) for n in text.split(",") if n) if text is not None else default

    chosen = args.sizes is not None or args.idle_sizes is not None
    sizes = numbers(args.sizes, () if chosen else QUICK_SIZES if args.quick else FULL_SIZES)
    idle_sizes = numbers(args.idle_sizes,
                         () if chosen else QUICK_IDLE_SIZES if args.quick else IDLE_SIZES)
    plot_to = args.plot or (None if args.quick or chosen else PLOT)
    return asyncio.run(run(sizes, idle_sizes, args.profile, plot_to, args.quick))


if __name__ == "__main__":
    sys.exit(main())
