"""Benchmark of catching up: the daemon restarted after 24 hours down, against a naive evaluator.

Not a test. Run with ``uv run --frozen python -m bench.catchup`` (``--quick``: 2 hours down;
``--profile``: cProfile of the catch-up). The scenario, with the default rules
(``rules/openrouter.yaml``: seven counter rules, one-minute windows, query offset 2 minutes):

1. A Tempo double in a child process (``bench.tempo_server``) holds synthetic OpenRouter
   spans up to now; a real Prometheus receives the samples.
2. "Before the stop": the engine, its clock set 24 h in the past, records the window due
   then, as a daemon started that day would; its samples count as delivered.
3. The restart: the real daemon (``bridge.daemon.Daemon``), its clock frozen at the restart
   time so that no new window comes due while it works, catches the day up. Figures: the
   Tempo queries it issued (target: at most 2 per rule), wall and CPU time, and the samples
   written (older than ``max_sample_age``, 50 m, are dropped by the sender, not sent).
4. A one-query-per-window evaluator (what Grafana-managed recording rules do), in this
   script: one instant query per window per rule through ``TempoClient``, in order,
   counters kept in memory. Its totals are those of a run that never stopped; the
   daemon's must equal them, the truth computed from the spans, and what Prometheus holds.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import pstats
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from bench.common import (
    TEMPO_QUERIES,
    Report,
    SpanSpec,
    Stopwatch,
    machine,
    tempo_server,
    timed,
    totals_differences,
    without_name,
)
from bridge.components import STATE_FILE, limits, load_rules
from bridge.config import load_config
from bridge.daemon import Daemon
from bridge.engine import Engine, read_buckets, rule_key
from bridge.evaluation import reads_from_buckets, series_labels
from bridge.logs import configure
from bridge.metrics import Metrics
from bridge.rules import Group
from bridge.state import State
from bridge.tempo import TempoClient
from bridge.windows import Query, Window, align_down
from tests.support.files import DEFAULT_RULES
from tests.support.files import write_config as write_bridge_config
from tests.support.prometheus import PrometheusServer, start_prometheus
from tests.support.traffic import Key, span_truth, summed_attributes

RAN_BEFORE = 2 * 3600  # how long the daemon ran before it stopped
Totals = dict[str, dict[Key, float]]  # record -> labels without __name__ -> total


def write_config(directory: Path, tempo_url: str, write_url: str) -> Path:
    """The default rules as shipped, Tempo's default cutoff and ingest delay."""
    return write_bridge_config(
        directory, tempo_url, write_url,
        tempo={"query_end_cutoff": None, "ingest_delay": None},
        state_dir=str(directory / "state"), rule_files=[str(DEFAULT_RULES)],
        log_level="warning",
    )


def state_totals(state: State, group: Group) -> tuple[Totals, dict[str, int]]:
    """Counter totals (labels without ``__name__``) and the checkpoint of every rule."""
    totals: Totals = {}
    checkpoints = {}
    for rule in group.rules:
        stored = state.load(rule_key(group, rule))
        if stored is None:
            continue
        sums: dict[Key, float] = {}
        for key, total in stored.totals.items():
            labels = without_name(series_labels(rule, group, key))
            sums[labels] = sums.get(labels, 0.0) + total.value
        totals[rule.record] = sums
        checkpoints[rule.record] = stored.checkpoint
    return totals, checkpoints


def prometheus_totals(prom: PrometheusServer, at: int) -> Totals:
    """The latest value of every default-rule series in Prometheus at ``at``."""
    totals: Totals = {}
    for item in prom.query('{__name__=~"openrouter_.+"}', time=at):
        labels = dict(item["metric"])
        record = labels.pop("__name__")
        totals.setdefault(record, {})[tuple(sorted(labels.items()))] = float(item["value"][1])
    return totals


async def before_the_stop(config_path: Path, clocks: Sequence[float]) -> None:
    """What a daemon that ran before the stop did: evaluate at each of ``clocks`` (the
    first records the window due then; later ones catch up to them and settle), its samples
    all delivered. Its settle checkpoints are then those of a daemon that never paused."""
    config = load_config(config_path)
    state = State(config.state_dir / STATE_FILE)
    tempo = TempoClient(config.tempo.url, timeout=config.tempo.timeout)
    try:
        for now in clocks:
            engine = Engine(tempo, state, Metrics(), limits=limits(config),
                            clock=functools.partial(float, now))
            for group in load_rules(config):
                if not await engine.evaluate_group(group):
                    raise RuntimeError("an evaluation before the stop failed")
        state.remove_from_outbox(i for i, _ in state.outbox(limit=10_000_000))
    finally:
        await tempo.aclose()
        state.close()


async def restart(config_path: Path, restart_at: float, target: int, group: Group,
                  profile: cProfile.Profile | None, watch: Stopwatch,
                  ) -> tuple[Daemon, float, float]:
    """Run the daemon, clock frozen at ``restart_at``, until every rule has recorded the
    window ending ``target`` and the outbox is empty; returns it, wall and CPU seconds.
    ``watch`` gets the time spent in Tempo queries (``tempo``), answers parsed included."""
    config = load_config(config_path)
    daemon = Daemon(config_path, config, load_rules(config), clock=lambda: restart_at)
    for name in TEMPO_QUERIES:
        timed(watch, daemon.tempo, name, "tempo")
    started, cpu = time.perf_counter(), time.process_time()
    if profile:
        profile.enable()
    task = asyncio.create_task(daemon.run())
    try:
        deadline = time.monotonic() + 900
        while True:
            await asyncio.sleep(0.02)
            if task.done():
                raise RuntimeError(f"the daemon stopped: {task.exception()!r}")
            if time.monotonic() > deadline:
                raise RuntimeError("the daemon did not catch up in 15 minutes")
            _, checkpoints = state_totals(daemon.state, group)
            if (len(checkpoints) == len(group.rules) and min(checkpoints.values()) >= target
                    and daemon.state.outbox_samples() == 0):
                break
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        if profile:
            profile.disable()
        daemon.stop()
        await task
    return daemon, wall, cpu


async def naive(
    tempo_url: str, group: Group, start: Mapping[str, Mapping[Key, float]],
    window_ends: range,
) -> tuple[Totals, int, float, float]:
    """One instant query per window per rule, in window order: totals, queries, wall and
    CPU seconds. Its counters are kept here, apart from the bridge's evaluation."""
    client = TempoClient(tempo_url)
    totals = {rule.record: dict(start.get(rule.record, {})) for rule in group.rules}
    queries = 0
    started, cpu = time.perf_counter(), time.process_time()
    try:
        for end in window_ends:
            window = Window(end - group.interval, end)
            query = Query("instant", window.start, end, group.interval, (window,))
            for rule in group.rules:
                buckets = await read_buckets(client, group, rule, query)
                queries += 1
                counters = totals[rule.record]
                for read in reads_from_buckets(query, buckets):
                    for key, value in read.values.items():
                        labels = without_name(series_labels(rule, group, key))
                        counters[labels] = counters.get(labels, 0.0) + max(value, 0.0)
    finally:
        await client.aclose()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return totals, queries, seconds, cpu


async def run(quick: bool, profile: bool) -> int:
    report = Report("catchup")
    down = 2 * 3600 if quick else 24 * 3600
    mean_gap = 8.0 if quick else 4.0
    configure("warning")
    report.note(machine())
    now = time.time()
    spec = SpanSpec(start=now - down - RAN_BEFORE - 900, seconds=down + RAN_BEFORE + 1500,
                    mean_gap=mean_gap, seed=5)
    with tempfile.TemporaryDirectory(prefix="bench-catchup-") as tmp, \
            start_prometheus(Path(tmp) / "prometheus") as prom, \
            tempo_server(spec, query_end_cutoff=30.0) as tempo:
        config_path = write_config(Path(tmp), tempo.url, prom.write_url)
        (group,) = load_rules(load_config(config_path))

        stop_at = time.time() - down
        await before_the_stop(config_path, [stop_at - RAN_BEFORE, stop_at])
        state = State(load_config(config_path).state_dir / STATE_FILE)
        before, checkpoints = state_totals(state, group)
        state.close()
        stopped_checkpoint = min(checkpoints.values())
        first_window_start = (
            align_down(stop_at - RAN_BEFORE - group.query_offset, group.interval) - group.interval
        )

        restart_at = stop_at + down
        target = align_down(restart_at - group.query_offset, group.interval)
        answered = len(tempo.queries())
        profiler = cProfile.Profile() if profile else None
        rules = len(group.rules)
        watch = Stopwatch()
        daemon, wall, cpu = await restart(config_path, restart_at, target, group, profiler,
                                          watch)
        queries = tempo.queries()[answered:]

        windows = (target - stopped_checkpoint) // group.interval
        report.note(f"{len(spec.spans()):,} spans over {down / 3600:g} h; {rules} rules, "
                    f"{group.interval} s windows, query offset {group.query_offset} s")
        report.figure("downtime", down / 3600, "h", digits=1)
        report.figure("windows caught up per rule", windows)
        settles = [q for q in queries if int(q.end) <= stopped_checkpoint]
        report.figure("Tempo queries", len(queries))
        report.figure("Tempo range queries", sum(q.kind == "range" for q in queries))
        report.figure("Tempo instant queries", sum(q.kind == "instant" for q in queries))
        report.figure("of which re-reads (settle)", len(settles))
        report.figure("Tempo queries per rule", len(queries) / rules, digits=2, at_most=2)
        report.figure("wall time", wall, "s", digits=2)
        report.figure("of which in Tempo queries", watch.seconds["tempo"], "s", digits=2,
                      share=watch.seconds["tempo"] / wall)
        report.check("the Tempo queries were timed", watch.seconds["tempo"] > 0)
        report.figure("bridge CPU time", cpu, "s", digits=2)
        sample = daemon.metrics.registry.get_sample_value
        sent = sample("tempo_bridge_samples_sent_total") or 0.0
        dropped = {reason: sample("tempo_bridge_samples_dropped_total", {"reason": reason}) or 0
                   for reason in ("too_old", "out_of_order", "rejected")}
        report.figure("samples written to the outbox", int(sent + sum(dropped.values())))
        report.figure("samples sent to Prometheus", int(sent))
        report.figure("samples older than max_sample_age", int(dropped["too_old"]))
        report.check("no sample refused or out of order",
                     dropped["rejected"] == dropped["out_of_order"] == 0, str(dropped))

        state = State(load_config(config_path).state_dir / STATE_FILE)
        after, checkpoints = state_totals(state, group)
        state.close()
        report.check("every rule caught up", min(checkpoints.values()) == target,
                     f"{checkpoints} != {target}")

        never_stopped, naive_queries, naive_seconds, naive_cpu = await naive(
            tempo.url, group, before,
            range(stopped_checkpoint + group.interval, target + 1, group.interval),
        )
        problems = totals_differences(after, never_stopped)
        report.check("totals equal a run that never stopped", not problems, "; ".join(problems[:5]))
        truth = span_truth(spec.spans(), summed_attributes(group.rules), first_window_start,
                           target)
        problems = totals_differences(after, truth)
        report.check("totals equal the spans' truth", not problems, "; ".join(problems[:5]))
        problems = totals_differences(prometheus_totals(prom, target), after)
        report.check("Prometheus holds the totals", not problems, "; ".join(problems[:5]))

        report.note("naive: one instant query per window per rule, in order, through "
                    "TempoClient; counters in memory only (no state, no remote write)")
        report.figure("naive Tempo queries", naive_queries)
        report.figure("naive wall time", naive_seconds, "s", digits=2)
        report.figure("naive CPU time", naive_cpu, "s", digits=2)
        report.figure("queries saved (naive / bridge)", naive_queries / max(len(queries), 1),
                      "x", digits=1)
        report.figure("time saved (naive / bridge)", naive_seconds / wall, "x", digits=1)
    if profiler:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
    return report.exit_status()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 hours down instead of 24")
    parser.add_argument("--profile", action="store_true", help="cProfile the catch-up")
    args = parser.parse_args(argv)
    return asyncio.run(run(args.quick, args.profile))


if __name__ == "__main__":
    sys.exit(main())
