"""Status board: what the engine and the sender record, kept across reloads, and copied out."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.engine import Engine
from bridge.metrics import Metrics
from bridge.rulefmt import load_rule_files
from bridge.state import State
from bridge.status import Evaluation, GroupStatus, RuleStatus, Status, StatusBoard
from bridge.tempo import TempoClient
from bridge.windows import Limits
from tests.doubles.tempo import CloseConnection, Response, Span, TempoDouble

T0 = 1795780800
EXPR = '{ resource.service.name = "svc" } | count_over_time() by (span.model)'


def board() -> StatusBoard:
    return StatusBoard(Status(version="1", started=T0, config_file="bridge.yaml"))


def group(expr: str = EXPR, labels: dict[str, str] | None = None) -> GroupStatus:
    return GroupStatus(
        name="g", file="rules.yaml", interval=60, query_offset=60, settle=(600,), tenant=None,
        rules=[RuleStatus("x_total", "counter", expr, labels or {})],
    )


def test_a_reload_keeps_what_a_rule_recorded_and_takes_its_new_labels() -> None:
    b = board()
    b.set_groups([group()])
    failed = Evaluation(at=T0, duration=0.1, series=0, queries={"instant": 1}, windows=0,
                        error="Tempo answered 500", reason="http_500")
    b.evaluated("g", "x_total", failed)
    rule = b.rule("g", "x_total")
    assert rule is not None
    rule.checkpoint = T0
    b.set_groups([group(labels={"team": "a"})])
    (kept,) = b.snapshot().groups[0].rules
    assert (kept.checkpoint, kept.last, kept.last_error) == (T0, failed, failed)
    assert kept.labels == {"team": "a"}
    # another expression is another rule: its totals start anew, and so does its status
    b.set_groups([group(expr=EXPR.replace("svc", "other"))])
    (fresh,) = b.snapshot().groups[0].rules
    assert (fresh.checkpoint, fresh.last, fresh.last_error) == (None, None, None)


def test_the_snapshot_is_a_copy() -> None:
    b = board()
    b.set_groups([group()])
    snapshot = b.snapshot()
    rule = b.rule("g", "x_total")
    assert rule is not None
    rule.checkpoint = T0
    assert snapshot.groups[0].rules[0].checkpoint is None


def test_the_outbox_waits_from_the_first_undelivered_count_until_it_is_empty() -> None:
    b = board()
    b.outbox(0, 0.0, T0)
    assert b.snapshot().outbox_waiting_since is None
    b.outbox(5, 30.0, T0 + 1)
    b.outbox(9, 35.0, T0 + 6)
    status = b.snapshot()
    assert (status.outbox_samples, status.outbox_oldest_age, status.outbox_updated) == (
        9, 35.0, T0 + 6)
    assert (status.outbox_waiting_since, status.outbox_waiting_samples) == (T0 + 1, 5)
    b.outbox(0, 0.0, T0 + 7)
    assert b.snapshot().outbox_waiting_since is None


@pytest.mark.parametrize(
    ("fault", "reason", "reachable"),
    [(Response.text(500, "ingester down"), "http_500", True),
     (CloseConnection(), "network", False)],
)
async def test_the_engine_records_evaluations_and_tempos_answers(
    tmp_path: Path, fault: Response | CloseConnection, reason: str, reachable: bool,
) -> None:
    now = T0 + 150
    double = TempoDouble([Span(start_ns=(T0 + 10) * 10**9, attributes={"model": "m"},
                               resource={"service.name": "svc"})],
                         clock=lambda: now, query_end_cutoff=0)
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "groups:\n  - name: g\n    interval: 60s\n    query_offset: 60s\n    start: 2m\n"
        f"    rules:\n      - record: x_total\n        expr: '{EXPR}'\n        kind: counter\n"
    )
    (loaded,) = load_rule_files([str(rules)], min_query_offset=0)
    b = board()
    b.set_groups([group()])
    state = State(tmp_path / "state.sqlite")
    engine = Engine(TempoClient("http://tempo", transport=double.transport()), state, Metrics(),
                    limits=Limits(max_duration=86400, max_intervals=10_000),
                    clock=lambda: now, status=b)
    double.inject(fault)
    assert not await engine.evaluate_group(loaded)
    tempo = b.snapshot().tempo
    assert tempo is not None
    assert (tempo.ok, tempo.reason, tempo.reachable) == (False, reason, reachable)
    assert tempo.error is not None
    (failed,) = b.snapshot().groups[0].rules
    assert failed.last is not None
    assert failed.last.reason == reason
    assert failed.last.error == tempo.error
    assert failed.last_error == failed.last

    assert await engine.evaluate_group(loaded)
    (rule,) = b.snapshot().groups[0].rules
    assert rule.last is not None
    assert rule.last.error is None
    assert rule.last_error == failed.last  # the latest failure stays in view
    assert rule.checkpoint == T0 + 60
    assert rule.windows_behind == 0
    assert (rule.last.series, rule.last.windows, rule.last.queries) == (1, 3, {"range": 1})
    tempo = b.snapshot().tempo
    assert tempo is not None
    assert (tempo.ok, tempo.error, tempo.reachable) == (True, None, True)
    state.close()
