"""The reliability harness (``reliability/faults.py``) in CI sizes, and the faults it found,
as unit tests.

``python -m reliability.faults --quick`` runs in a child process, as anyone would run it:
each scenario runs the real daemon as a subprocess against the Tempo double and a real
Prometheus while one thing fails (Tempo or the receiver away or misbehaving, SIGKILLs,
late spans) or the rule file is edited and reloaded, then reads every counter back with
PromQL. Its table is checked row by row: no window lost or counted twice, and every
counter equal to the truth computed from the spans (1e-9 relative). The quick sizes (3
windows down, 4 s of faults, 3 kills, 3 s between edits) take about 95 s for all seven
scenarios on two cores; without ``--quick`` the harness runs the full ones.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from bridge.engine import Engine, rule_key
from bridge.metrics import Metrics
from bridge.state import State
from bridge.tempo import TempoClient
from bridge.windows import Limits
from tests.doubles.tempo import Response, Span, TempoDouble
from tests.support.clock import FakeClock
from tests.support.files import Rule, load_group

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("tempo-down", "tempo-faults", "receiver-down", "receiver-faults", "sigkill",
             "late-spans", "edits")
TOLERANCE = 1e-9  # relative: Tempo's float sums may differ from the exact sum in the last bits


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str

    def rows(self) -> dict[str, dict[str, str]]:
        """The table's rows by scenario, each cell by its column's title."""
        lines = [line for line in self.stdout.splitlines() if line.startswith("| ")]
        if not lines:
            return {}
        header, *rows = ([cell.strip() for cell in line.strip().strip("|").split("|")]
                         for line in lines)
        return {row[0]: dict(zip(header, row, strict=True)) for row in rows}


@pytest.fixture(scope="module")
def run() -> Run:
    result = subprocess.run(
        [sys.executable, "-m", "reliability.faults", "--quick"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    return Run(result.returncode, result.stdout, result.stderr)


@pytest.mark.prometheus
def test_the_harness_runs_every_scenario_and_succeeds(run: Run) -> None:
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert list(run.rows()) == list(SCENARIOS)


@pytest.mark.prometheus
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_no_window_is_lost_or_counted_twice(run: Run, scenario: str) -> None:
    row = run.rows().get(scenario)
    assert row is not None, run.stdout[-3000:] + run.stderr[-3000:]
    assert f"FAILED {scenario}:" not in run.stderr, run.stderr
    expected = int(row["windows expected"])
    assert expected >= 5
    assert int(row["recorded"]) == expected
    assert (int(row["lost"]), int(row["double-counted"])) == (0, 0)
    assert float(row["max relative error"]) <= TOLERANCE


@pytest.mark.prometheus
def test_the_edits_scenario_edits_the_running_daemon(run: Run) -> None:
    """The edits row is exact because the edits happened: every reload and the restart
    reached the daemon, and the label edits ended the series they relabelled."""
    row = run.rows().get("edits")
    assert row is not None, run.stdout[-3000:] + run.stderr[-3000:]
    injected, logged = row["faults injected"], row["the daemon logged"]
    assert injected.startswith("11 edits (7 SIGHUP, 3 POST /-/reload, 1 restart)"), injected
    assert "10 reloads" in logged, logged
    assert "1 restarts" in logged, logged
    relabelled = re.search(r"stale markers \((\d+) ending relabelled series", injected)
    assert relabelled is not None, injected
    assert int(relabelled.group(1)) > 0, injected



@pytest.mark.prometheus
def test_the_late_spans_scenario_reads_windows_again_and_finds_them_grown(run: Run) -> None:
    """Late spans are exact because settle passes read their windows again and found the
    series grown, as the daemon's evaluation log lines say (the harness reads their
    ``reread`` and ``grown`` fields: a renamed field once made this column read 0)."""
    row = run.rows().get("late-spans")
    assert row is not None, run.stdout[-3000:] + run.stderr[-3000:]
    logged = re.search(r"(\d+) windows read again \((\d+) grown series\)",
                       row["the daemon logged"])
    assert logged is not None, row["the daemon logged"]
    assert int(logged.group(1)) > 0, row["the daemon logged"]
    assert int(logged.group(2)) > 0, row["the daemon logged"]


# -- findings -------------------------------------------------------------------------------

T0 = 1795780800  # a multiple of 3600
COUNT = '{ resource.service.name = "svc" } | count_over_time() by (span.model)'


@pytest.mark.parametrize("body", [b"{}", b'{"series": [{"labels": [], "samples": "none"}]}'])
async def test_a_body_that_is_not_a_metrics_answer_loses_no_window(
    tmp_path: Path, body: bytes
) -> None:
    """Found by the harness (tempo-faults): such a 200 answer was taken as a window
    without spans, and the window was lost unless a settle pass read it again.

    Tempo's answers always carry a ``metrics`` object (every capture of Tempo 3.0.3
    does); an empty object, or an instant series shaped like nothing Tempo sends, come
    from something else (a proxy, a cache, a misrouted URL) and must not be recorded."""
    clock = FakeClock(T0 + 120)  # the window (T0, T0 + 60] is due
    double = TempoDouble(
        [Span(start_ns=(T0 + 10) * 10**9, attributes={"model": "a"},
              resource={"service.name": "svc"})],
        clock=clock, query_end_cutoff=0,
    )
    state = State(tmp_path / "state.sqlite")
    engine = Engine(TempoClient("http://tempo", transport=double.transport()), state,
                    Metrics(), limits=Limits(), clock=clock)
    group = load_group(tmp_path / "rules.yaml", Rule("requests_total", COUNT),
                       interval="60s", query_offset="60s", settle="[600s]")
    key = rule_key(group, group.rules[0])

    double.inject(Response(200, "application/json", body))
    assert not await engine.evaluate_group(group), "the window was recorded from garbage"
    stored = state.load(key)
    assert stored is not None
    assert stored.checkpoint == T0
    assert await engine.evaluate_group(group)  # the retry reads the span
    stored = state.load(key)
    assert stored is not None
    assert {k: t.value for k, t in stored.totals.items()} == {(("span.model", "a"),): 1.0}
