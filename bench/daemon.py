"""Benchmark: the installed daemon as a whole, one rule of 100,000 series, window after window.

Not a test. Run with ``uv run --frozen python -m bench.daemon`` (``--quick``: 2,000 series
in 2 s windows, as CI runs it; ``--series 1000000``: a million series in 60 s windows).

What a user sees: ``tempo-bridge run`` as a child process, with a config derived from
``examples/bridge.yaml`` (as ``bench.idle`` derives it) and one rule, the cost rule of
``bench.evaluate`` by model, provider and API key, in 10 s windows (60 s at 1,000,000
series); Tempo is a stand-in serving ``bench.evaluate``'s prebuilt answers (Tempo 3.0.3's
shape) from this process, the range answers of the windows the run will ask for stamped
beforehand; the receiver is a real Prometheus. Everything the daemon does is measured:
its scheduler, logs, self-metrics, state, sender.

This process follows the daemon's log (its ``evaluation`` lines) and reads its CPU time
from ``/proc/<pid>/stat`` when a window's line appears: the first window (every series
new; CPU counted from the daemon's start, so its imports and start-up are in it), then
the steady windows, whose CPU is the daemon's total from the end of the first steady
evaluation to the end of the last, divided by the windows between them: each window's
send to Prometheus, the next evaluation, and whatever the daemon does between windows.
The evaluation's own wall time is the ``seconds`` of its log line (Tempo's answer, the
evaluation, the commit; not the send). Memory: ``VmRSS`` and ``VmHWM`` of the daemon at
the end. The daemon's ``/metrics`` (samples sent) is read once, at the end, so that
reading it costs the daemon nothing while it is measured. Its health endpoint is asked
twice a second throughout, as a supervisor would: the slowest answer is how long the
daemon's event loop was kept from its watchdog pings, health checks and scrapes (the
systemd unit's ``WatchdogSec`` is 30 s; Prometheus's scrape timeout 10 s by default).
Each answer costs the daemon about 0.3 ms of CPU (1,000 of them measured), 0.5% of a
steady 10 s window's figure at 100,000 series.

Checks: the daemon evaluated every window it was given without a failure, every sample
was sent, Prometheus holds every series at the last window's end, the daemon stopped
cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.common import Report, machine, proc_status_mb
from bench.evaluate import RECORD, RULES, serve_answers, tempo_answers
from bench.idle import command, write_config
from tests.support.prometheus import start_prometheus
from tests.support.servers import free_port

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Size:
    """One run's rule: how many series its answers hold, its window, what is measured."""

    series: int
    interval: int
    """Window length, seconds."""
    steady: int
    """Steady windows whose CPU time is measured, after a first steady one."""


FULL = Size(100_000, 10, 5)
QUICK = Size(2_000, 2, 2)
MILLION = Size(1_000_000, 60, 3)


def rules(size: Size) -> str:
    """``bench.evaluate``'s rule in windows of ``size.interval`` seconds, read 1 s after
    they end (the stand-in answers at once)."""
    return (RULES.replace("interval: 1m", f"interval: {size.interval}s")
            .replace("query_offset: 2m", "query_offset: 1s"))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class LogFollower:
    """The daemon's ``evaluation`` log lines, read as they are written."""

    def __init__(self, path: Path) -> None:
        self._path, self._offset = path, 0
        self.evaluations: list[dict[str, Any]] = []
        self.problems: list[dict[str, Any]] = []

    def poll(self) -> None:
        with self._path.open("rb") as log:
            log.seek(self._offset)
            data = log.read()
        complete = data.rfind(b"\n") + 1
        self._offset += complete
        for line in data[:complete].splitlines():
            try:
                entry = json.loads(line.lstrip(b"<0123456789>"))
            except ValueError:
                continue
            if entry.get("event") == "evaluation":
                self.evaluations.append(entry)
            elif entry.get("level") in ("warning", "error"):
                self.problems.append(entry)


async def samples(url: str) -> tuple[float, float]:
    """Samples sent and samples dropped, from the daemon's ``/metrics``."""
    async with httpx.AsyncClient(timeout=30) as client:
        text = (await client.get(url)).text
    found = [(sample.name, sample.value) for family in text_string_to_metric_families(text)
             for sample in family.samples]
    return (sum(v for name, v in found if name == "tempo_bridge_samples_sent_total"),
            sum(v for name, v in found if name == "tempo_bridge_samples_dropped_total"))


class HealthProbe:
    """Asks the daemon's ``/-/healthy`` every ``every`` seconds; the slowest answer, in
    all and of the requests sent since :meth:`mark`."""

    def __init__(self, url: str, every: float = 0.5) -> None:
        self.url, self.every = url, every
        self.slowest = self.slowest_since_mark = 0.0
        self.answers = 0
        self._marked = float("inf")

    def mark(self) -> None:
        self._marked = time.monotonic()

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=120) as client:
            while True:
                started = time.monotonic()
                try:
                    await client.get(self.url)
                except httpx.TransportError:  # not listening yet: not an answer
                    await asyncio.sleep(self.every)
                    continue
                took = time.monotonic() - started
                self.slowest = max(self.slowest, took)
                if started >= self._marked:  # one sent before waited for what came before
                    self.slowest_since_mark = max(self.slowest_since_mark, took)
                self.answers += 1
                await asyncio.sleep(max(self.every - took, 0.0))


async def wait_for(follower: LogFollower, count: int, seconds: float,
                   daemon: asyncio.subprocess.Process) -> tuple[float, float]:
    """Wait until the log holds ``count`` evaluations; the daemon's CPU time and the
    monotonic time when it did."""
    try:
        async with asyncio.timeout(seconds):
            while True:
                follower.poll()
                if len(follower.evaluations) >= count:
                    return cpu_seconds(daemon.pid), time.monotonic()
                if daemon.returncode is not None:
                    raise RuntimeError(f"the daemon exited with status {daemon.returncode}")
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise RuntimeError(f"no evaluation {count} in the daemon's log after {seconds:.0f} s") \
            from None


async def measure(size: Size, report: Report) -> None:
    name = f"{size.series:,} series"
    with tempfile.TemporaryDirectory(prefix="bench-daemon-") as tmp, \
            start_prometheus(Path(tmp) / "prometheus") as prom:
        directory = Path(tmp)
        now = int(time.time())
        ends = range(now // size.interval * size.interval,
                     now + (size.steady + 4) * size.interval, size.interval)
        runner, tempo_url = await serve_answers(tempo_answers(size.series), ends=ends,
                                                window=size.interval)
        port = free_port()
        config = write_config(directory, tempo_url, prom.write_url, port, rules(size))
        log_path = directory / "daemon.log"
        follower = LogFollower(log_path)
        with log_path.open("wb") as log:
            daemon = await asyncio.create_subprocess_exec(
                *command(), "run", "--config", str(config),
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        probe = HealthProbe(f"http://127.0.0.1:{port}/-/healthy")
        probing = asyncio.create_task(probe.run())
        try:
            first_wait = 120 + size.series / 2_000
            first_cpu, _ = await wait_for(follower, 1, first_wait, daemon)
            probe.mark()  # the steady windows' own
            # from the end of the first steady evaluation to the end of the last: each
            # window's send to Prometheus, then the next evaluation
            begin_cpu, begin_at = await wait_for(follower, 2, size.interval * 3, daemon)
            end_cpu, end_at = await wait_for(follower, 2 + size.steady,
                                             size.interval * (size.steady + 2), daemon)
            status = proc_status_mb(daemon.pid)
            await asyncio.sleep(size.interval / 2)  # the last window's samples are sent
            sent, dropped = await samples(f"http://127.0.0.1:{port}/metrics")
        finally:
            probing.cancel()
            daemon.terminate()
            try:
                code = await asyncio.wait_for(daemon.wait(), 60)
            except TimeoutError:
                daemon.kill()
                code = await daemon.wait()
            await runner.cleanup()
        first, *steadies = follower.evaluations[:2 + size.steady]
        report.note(f"{name}: tempo-bridge run, one rule, {size.interval} s windows; "
                    f"{len(steadies)} steady evaluations after the first")
        report.figure(f"{name}: first window: daemon CPU time, start-up included",
                      first_cpu, "s")
        per_window = (end_cpu - begin_cpu) / size.steady
        report.figure(f"{name}: steady window: daemon CPU time", per_window, "s",
                      at_most=1.0 if size.series == 100_000 else None)
        report.figure(f"{name}: steady window: daemon CPU per series",
                      per_window / size.series * 1e6, "us", digits=2)
        report.figure(f"{name}: steady window: share of one CPU",
                      per_window / ((end_at - begin_at) / size.steady) * 100, "%", digits=1)
        report.figure(f"{name}: first window: evaluation wall time (before the send)",
                      float(first["seconds"]), "s")
        seconds = sorted(float(e["seconds"]) for e in steadies)
        report.figure(f"{name}: steady window: evaluation wall time (before the send), median",
                      statistics.median(seconds), "s")
        report.note(f"{name}: steady evaluations took {seconds[0]:.3f} to {seconds[-1]:.3f} s "
                    "(the daemon's log: the Tempo query, the evaluation, the commit)")
        report.figure(f"{name}: slowest answer of the health endpoint, from the start",
                      probe.slowest, "s", at_most=10.0)
        report.figure(f"{name}: slowest answer of the health endpoint, steady windows",
                      probe.slowest_since_mark, "s", at_most=10.0)
        report.note(f"{name}: the health endpoint answered {probe.answers} times")
        report.figure(f"{name}: RSS at the end (VmRSS)", status["VmRSS"], "MB", digits=1)
        report.figure(f"{name}: peak RSS (VmHWM)", status["VmHWM"], "MB", digits=1)
        evaluated = [e for e in follower.evaluations if e.get("series") == size.series]
        report.check(f"{name}: every window evaluated with every series",
                     len(evaluated) == len(follower.evaluations) >= 2 + size.steady
                     and not follower.problems,
                     f"{len(evaluated)} of {len(follower.evaluations)}; {follower.problems[:2]}")
        # later windows may have been evaluated and sent by the time /metrics was read
        written = sum(int(e.get("samples", 0)) for e in follower.evaluations[:2 + size.steady])
        report.check(f"{name}: every sample was sent", sent >= written > 0 and not dropped,
                     f"{written} written in the windows measured, {sent:.0f} sent, "
                     f"{dropped:.0f} dropped")
        last_end = max(int(e["window_end"]) for e in follower.evaluations)
        stored = prom.query(f"count(timestamp({RECORD}) == {last_end})", time=last_end,
                            timeout=120)
        held = int(stored[0]["value"][1]) if stored else 0
        report.check(f"{name}: Prometheus holds every series at the last window's end",
                     held == size.series, f"{held} of {size.series}")
        report.check(f"{name}: the daemon stopped cleanly on SIGTERM", code == 0,
                     f"exit status {code}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK.series:,} series in {QUICK.interval} s windows")
    parser.add_argument("--series", type=int, choices=[FULL.series, MILLION.series],
                        help="the size to run (default 100,000)")
    args = parser.parse_args(argv)
    size = QUICK if args.quick else MILLION if args.series == MILLION.series else FULL
    report = Report("daemon")
    report.note(machine())
    asyncio.run(measure(size, report))
    return report.exit_status()


if __name__ == "__main__":
    sys.exit(main())
