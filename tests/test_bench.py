"""The benchmarks run in quick mode and print their figures: ``python -m bench --quick``.

The command runs in a child process, as anyone would run it, and its output is read: no
timing is asserted, only that each benchmark ran, printed the figures it promises as
figure lines (``FIGURE``, the format ``bench.common.Report`` prints, with a met/MISSED
verdict where there is a target), and passed its correctness checks (catch-up totals equal
a run that never stopped, ...).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.prometheus

ROOT = Path(__file__).resolve().parent.parent

FIGURE = re.compile(
    r"^\[(?P<bench>[a-z_-]+)\] (?P<label>.+?) \.+ (?P<value>-?[\d,]+(?:\.\d+)?%?|yes|no)"
    r"(?: (?P<unit>[^\s(]+))?(?: \((?P<share>[\d.]+)%\))?"
    r"(?: +target (?P<target>[<>=]+ \S+(?: \S+)?): (?P<verdict>met|MISSED))?$"
)
"""A figure line: ``[bench] label ..... value [unit] [(share%)] [target <= 1.0 s: met]``."""

# benchmark -> figures it must print; those with a target must show a verdict
EXPECTED = {
    "encode": {"encode_write_request, median": True, "protobuf size": False},
    "evaluate": {"2,000 series: steady: wall time": False,
                 "2,000 series: steady: CPU time": False,
                 "2,000 series: first: wall time": False, "2,000 series: peak RSS": False,
                 "2,000 series: steady: Tempo query: HTTP + JSON parse into buckets": False,
                 "2,000 series: steady: commit state + outbox": False,
                 "2,000 series: after a restart: opening the state": False,
                 "2,000 series: after a restart: first evaluation: wall time": False,
                 "2,000 series: after a restart: peak RSS": False,
                 "2,000 series, 1 in 20 growing: steady: wall time": False,
                 "2,000 series, 1 in 20 growing: steady: samples written": False},
    "catchup": {"Tempo queries per rule": True, "Tempo queries": False, "wall time": False,
                "samples written to the outbox": False, "naive Tempo queries": False,
                "naive wall time": False},
    "idle": {"idle RSS (VmRSS, highest reading)": True, "windows recorded per rule": False},
    "catchup_large": {"Tempo range queries": False, "catch-up, wall time": False,
                      "peak RSS": False},
    "parse": {"instant 10,000: msgspec": False, "range 10,000: msgspec peak RSS": False,
              "range 10,000: json": False, "range 10,000: buckets": False},
    "receiver": {"2,000 series: steady: wall time": False,
                 "2,000 series: first: Prometheus's CPU time": False},
    "daemon": {"2,000 series: steady window: daemon CPU time": False,
               "2,000 series: first window: daemon CPU time, start-up included": False,
               "2,000 series: steady window: evaluation wall time (before the send), median":
                   False,
               "2,000 series: peak RSS (VmHWM)": False,
               "2,000 series: slowest answer of the health endpoint, from the start": True,
               "2,000 series: slowest answer of the health endpoint, steady windows": True},
    "exemplars": {"2,000 exemplars on: steady wall time": False,
                  "2,000 exemplars off: steady CPU time": False,
                  "2,000 exemplars on: Tempo's answer": False,
                  "2,000: CPU time on / off": False},
}
CHECKS = {
    "encode": ["same bytes as the protobuf API"],
    "evaluate": ["2,000 series: every evaluation succeeded",
                 "2,000 series: every stage was timed",
                 "2,000 series: every series has a total", "2,000 series: every sample was sent",
                 "2,000 series: Prometheus holds every series", "the curve is drawn",
                 "2,000 series: after a restart: the evaluation succeeded, every series written",
                 "2,000 series, 1 in 20 growing: only the growing series are written",
                 "2,000 series, 1 in 20 growing: every series keeps its total"],
    "catchup": ["the Tempo queries were timed",
                "totals equal a run that never stopped", "totals equal the spans' truth",
                "Prometheus holds the totals", "every rule caught up"],
    "idle": ["the daemon stopped cleanly on SIGTERM", "Prometheus received the samples"],
    "catchup_large": ["the catch-up succeeded", "no sample dropped", "every series has a total",
                      "every total is its value times the windows"],
    "parse": ["every parser gives the same series (buckets: their buckets)"],
    "receiver": ["2,000 series: Prometheus holds every series"],
    "daemon": ["2,000 series: every window evaluated with every series",
               "2,000 series: every sample was sent",
               "2,000 series: Prometheus holds every series at the last window's end",
               "2,000 series: the daemon stopped cleanly on SIGTERM"],
    "exemplars": ["2,000 exemplars on: both evaluations succeeded",
                  "2,000: exemplars only with them on"],
}


@pytest.fixture(scope="module")
def output() -> tuple[int, str, str]:
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick"], cwd=ROOT, capture_output=True, text=True,
        timeout=300,
    )
    return run.returncode, run.stdout, run.stderr


def figures(stdout: str, bench: str) -> dict[str, re.Match[str]]:
    found = {}
    for line in stdout.splitlines():
        if not line.startswith(f"[{bench}] ") or line.startswith(f"[{bench}] # "):
            continue
        match = FIGURE.match(line)
        assert match, f"not a figure line: {line!r}"
        found[match["label"]] = match
    return found


def test_the_single_command_succeeds(output: tuple[int, str, str]) -> None:
    code, stdout, stderr = output
    assert code == 0, stdout[-3000:] + stderr[-3000:]
    for bench in EXPECTED:
        assert f"[{bench}] # finished in " in stdout


@pytest.mark.parametrize("bench", list(EXPECTED))
def test_prints_its_figures(output: tuple[int, str, str], bench: str) -> None:
    found = figures(output[1], bench)
    for label, has_target in EXPECTED[bench].items():
        assert label in found, f"{bench} did not print {label!r}: {sorted(found)}"
        assert bool(found[label]["verdict"]) == has_target, found[label].string


@pytest.mark.parametrize("bench", list(CHECKS))
def test_passes_its_checks(output: tuple[int, str, str], bench: str) -> None:
    found = figures(output[1], bench)
    for label in CHECKS[bench]:
        assert label in found, f"{bench} did not check {label!r}"
        assert found[label]["value"] == "yes", found[label].string


def test_evaluate_tells_in_which_stage_memory_peaked(output: tuple[int, str, str]) -> None:
    """Each evaluation's note names the stages and the most resident memory sampled in
    each, highest first (stages of a quick run can be too short for a sample)."""
    stages = {"tempo", "split", "evaluate", "encode", "commit", "send", "outbox", "between"}
    for when in ("first", "steady", "after a restart"):
        prefix = f"[evaluate] # 2,000 series: {when}: resident memory, the most in each stage: "
        (line,) = [line for line in output[1].splitlines() if line.startswith(prefix)]
        found = [(stage, float(mb.replace(",", ""))) for stage, mb in
                 (part.rsplit(" ", 2)[:2] for part in line[len(prefix):].split(", "))]
        assert found, line
        assert {stage for stage, _ in found} <= stages, line
        assert all(mb > 0 for _, mb in found), line
        assert [mb for _, mb in found] == sorted((mb for _, mb in found), reverse=True), line
