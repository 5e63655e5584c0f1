"""Benchmark of the daemon's resident memory once it is idle: ``tempo-bridge run`` after 10 windows.

Not a test. Run with ``uv run --frozen python -m bench.idle`` (``--quick``: 3 windows).

``tempo-bridge run`` runs as a child process with a config derived from
``examples/bridge.yaml`` (Tempo, receiver, state directory, rule file and listen address
replaced; Tempo's cutoff and ingest delay set to 0 s, as the Tempo double has none) and the
default rules with one-second windows (``interval: 1s``, ``query_offset: 1s``), so ten
windows pass in seconds. Tempo is the Tempo double over HTTP (``bench.tempo_server``) with
a stream of OpenRouter spans; the receiver is a real Prometheus. When every rule has
recorded the windows (``tempo_bridge_windows_evaluated_total`` on the daemon's
``/metrics``), its ``VmRSS`` is read from ``/proc`` a few times over a second, between
ticks. Target: idle RSS <= 80 MB.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.common import (
    EXAMPLE_CONFIG,
    Report,
    SpanSpec,
    machine,
    proc_status_mb,
    tempo_server,
    wait_until,
)
from tests.support.files import DEFAULT_RULES, default_rules
from tests.support.prometheus import start_prometheus
from tests.support.servers import free_port

INTERVAL = 1


def substitute(text: str, pattern: str, replacement: str) -> str:
    """``text`` with the one line matching ``pattern`` (multiline regex) replaced."""
    new, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    if count != 1:
        raise ValueError(f"{pattern!r} matches {count} lines of the example config, not 1")
    return new


def write_config(directory: Path, tempo_url: str, write_url: str, port: int,
                 rules: str | None = None) -> Path:
    """The example config, pointed at the benchmark's Tempo, Prometheus, state and rules
    (``rules``, or the default rules in windows of ``INTERVAL``)."""
    if rules is None:
        rules = default_rules(interval=INTERVAL, query_offset=INTERVAL)
    (directory / "rules.yaml").write_text(rules)
    text = EXAMPLE_CONFIG.read_text()
    for pattern, replacement in (
        (r"^  url: http://127\.0\.0\.1:3200$", f"  url: {tempo_url}"),
        (r"^  query_end_cutoff: \S+", "  query_end_cutoff: 0s"),
        (r"^  ingest_delay: \S+", "  ingest_delay: 0s"),
        (r"^  url: http://127\.0\.0\.1:9090/api/v1/write", f"  url: {write_url}"),
        (r"^state_dir: \S+", f"state_dir: {directory / 'state'}"),
        (r"^  - \.\./rules/\*\.yaml$", f"  - {directory / 'rules.yaml'}"),
        (r"^  listen_address: \S+", f"  listen_address: 127.0.0.1:{port}"),
    ):
        text = substitute(text, pattern, replacement)
    path = directory / "bridge.yaml"
    path.write_text(text)
    return path


def windows_evaluated(metrics_url: str) -> dict[str, float]:
    """``tempo_bridge_windows_evaluated_total`` per rule, from the daemon's ``/metrics``."""
    try:
        text = httpx.get(metrics_url, timeout=5).text
    except httpx.TransportError:
        return {}
    return {
        sample.labels["rule"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "tempo_bridge_windows_evaluated"
        for sample in family.samples
        if sample.name.endswith("_total")
    }


def command() -> list[str]:
    """The ``tempo-bridge`` console script of this environment."""
    script = Path(sys.executable).parent / "tempo-bridge"
    return [str(script)] if script.exists() else [sys.executable, "-m", "bridge"]


def run(windows: int) -> int:
    report = Report("idle")
    report.note(machine())
    now = time.time()
    rules = len(re.findall(r"(?m)^\s+- record: ", DEFAULT_RULES.read_text()))
    spec = SpanSpec(start=now - 60, seconds=120 + 5 * windows, mean_gap=0.2, seed=7)
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp, \
            start_prometheus(Path(tmp) / "prometheus") as prom, \
            tempo_server(spec, query_end_cutoff=0.0) as tempo:
        port = free_port()
        config = write_config(Path(tmp), tempo.url, prom.write_url, port)
        metrics_url = f"http://127.0.0.1:{port}/metrics"
        with (Path(tmp) / "daemon.log").open("wb") as log:
            daemon = subprocess.Popen([*command(), "run", "--config", str(config)],
                                      stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            started = time.monotonic()
            wait_until(lambda: len(done := windows_evaluated(metrics_url)) == rules
                       and min(done.values()) >= windows, 60 + 5 * windows,
                       f"{windows} windows of every rule")
            report.figure("time to record the windows", time.monotonic() - started, "s",
                          digits=1)
            readings = []
            for _ in range(5):
                readings.append(proc_status_mb(daemon.pid))
                time.sleep(0.2)
            evaluated = min(windows_evaluated(metrics_url).values())
        finally:
            daemon.terminate()
            try:
                code = daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                code = daemon.wait()
        report.note(f"tempo-bridge run, {rules} rules, {INTERVAL} s windows, after "
                    f"{int(evaluated)} windows; readings every 0.2 s")
        report.figure("windows recorded per rule", int(evaluated))
        report.figure("idle RSS (VmRSS, highest reading)", max(r["VmRSS"] for r in readings),
                      "MB", digits=1, at_most=80)
        report.figure("of which anonymous (RssAnon)", max(r["RssAnon"] for r in readings),
                      "MB", digits=1)
        report.figure("of which file-backed (RssFile)", max(r["RssFile"] for r in readings),
                      "MB", digits=1)
        report.figure("peak RSS (VmHWM)", max(r["VmHWM"] for r in readings), "MB", digits=1)
        report.check("the daemon stopped cleanly on SIGTERM", code == 0, f"exit status {code}")
        stored = prom.query("count(openrouter_requests_total)")
        report.check("Prometheus received the samples", bool(stored))
    return report.exit_status()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 windows instead of 10")
    parser.add_argument("--windows", type=int, help="windows to wait for")
    args = parser.parse_args(argv)
    return run(args.windows or (3 if args.quick else 10))


if __name__ == "__main__":
    sys.exit(main())
