"""Engine: due windows read from the Tempo double, committed once each, failures kept out."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from bridge.engine import Engine, dry_run
from bridge.errors import StateError
from bridge.metrics import Metrics
from bridge.rulefmt import load_rule_files
from bridge.rules import Group
from bridge.series import is_stale_nan
from bridge.state import State
from bridge.tempo import TempoClient
from tests.doubles.tempo import Response, Span, TempoDouble

T0 = 1795780800  # a multiple of 3600
COUNT = '{ resource.service.name = "svc" } | count_over_time() by (span.model)'
SUM = '{ resource.service.name = "svc" } | sum_over_time(span.cost) by (span.model)'


def span(t: float, model: str, cost: float = 1.0) -> Span:
    return Span(
        start_ns=int(t * 1e9),
        attributes={"model": model, "cost": cost},
        resource={"service.name": "svc"},
    )


def transport(double: TempoDouble) -> httpx.MockTransport:
    """Serve the double in-process: no sockets, same answers."""

    def handler(request: httpx.Request) -> httpx.Response:
        answer = double.handle(request.url.path, dict(request.url.params), dict(request.headers))
        assert isinstance(answer, Response)
        return httpx.Response(
            answer.status, content=answer.body, headers={"Content-Type": answer.content_type}
        )

    return httpx.MockTransport(handler)


def load_group(tmp_path: Path, kind: str, expr: str, start: str = "0s") -> Group:
    path = tmp_path / "rules.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            groups:
              - name: g
                interval: 60s
                query_offset: 60s
                start: {start}
                settle: [600s]
                rules:
                  - record: x
                    expr: '{expr}'
                    kind: {kind}
            """
        )
    )
    (group,) = load_rule_files([str(path)], min_query_offset=0)
    return group


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_engine(
    tmp_path: Path, double: TempoDouble, clock: Callable[[], float]
) -> tuple[Engine, State, Metrics]:
    state = State(tmp_path / "state.sqlite")
    metrics = Metrics()
    client = TempoClient("http://tempo", transport=transport(double))
    return Engine(client, state, metrics, max_duration=86400, clock=clock), state, metrics


def outbox(state: State) -> list[tuple[dict[str, str], int, float]]:
    return [(dict(r.labels), r.ts_ms // 1000, r.value) for r in state.outbox_head(100000)]


async def test_counter_accumulates_windows_in_order(tmp_path: Path) -> None:
    clock = Clock(T0 + 60 + 60)  # window (T0, T0+60] is due
    double = TempoDouble(
        [span(T0 + 10, "a"), span(T0 + 60, "a"), span(T0 + 61, "b"), span(T0 + 130, "a")],
        clock=clock, query_end_cutoff=0,
    )
    engine, state, _ = make_engine(tmp_path, double, clock)
    group = load_group(tmp_path, "counter", COUNT)
    assert await engine.evaluate_group(group)
    assert outbox(state) == [
        ({"__name__": "x", "model": "a"}, T0, 0.0),
        ({"__name__": "x", "model": "a"}, T0 + 60, 2.0),  # the span at T0+60 is in (T0, T0+60]
    ]
    clock.now += 120  # two more windows due: one range query
    assert await engine.evaluate_group(group)
    assert [r.path for r in double.requests][-1] == "/api/metrics/query_range"
    assert outbox(state)[2:] == [
        ({"__name__": "x", "model": "b"}, T0 + 60, 0.0),
        ({"__name__": "x", "model": "a"}, T0 + 120, 2.0),
        ({"__name__": "x", "model": "b"}, T0 + 120, 1.0),
        ({"__name__": "x", "model": "a"}, T0 + 180, 3.0),
        ({"__name__": "x", "model": "b"}, T0 + 180, 1.0),
    ]


async def test_a_failed_query_keeps_the_checkpoint_and_is_retried(tmp_path: Path) -> None:
    clock = Clock(T0 + 120)
    double = TempoDouble([span(T0 + 10, "a", 0.5)], clock=clock, query_end_cutoff=0)
    url = await double.start()
    state = State(tmp_path / "state.sqlite")
    metrics = Metrics()
    engine = Engine(TempoClient(url), state, metrics, max_duration=86400, clock=clock)
    group = load_group(tmp_path, "counter", SUM)
    double.inject(Response(503, "text/plain", b"busy"))
    assert not await engine.evaluate_group(group)
    assert state.outbox_depth() == 0
    stored = state.rule_state(group.rules[0].rule_id("g"))
    assert stored is not None
    assert stored.checkpoint == T0  # pinned: a later retry starts from the same window
    clock.now += 600  # Tempo is back ten windows later: nothing in between is lost
    failures = metrics.registry.get_sample_value(
        "tempo_bridge_evaluation_failures_total", {"group": "g", "rule": "x", "reason": "http_503"}
    )
    assert failures == 1
    assert await engine.evaluate_group(group)
    rows = outbox(state)
    assert rows[:2] == [
        ({"__name__": "x", "model": "a"}, T0, 0.0),
        ({"__name__": "x", "model": "a"}, T0 + 60, 0.5),
    ]
    assert rows[-1] == ({"__name__": "x", "model": "a"}, T0 + 660, 0.5)
    assert len(rows) == 12


async def test_partial_answer_is_a_failure(tmp_path: Path) -> None:
    clock = Clock(T0 + 120)
    double = TempoDouble([span(T0 + 10, "a")], clock=clock, query_end_cutoff=0)
    url = await double.start()
    state = State(tmp_path / "state.sqlite")
    metrics = Metrics()
    engine = Engine(TempoClient(url), state, metrics, max_duration=86400, clock=clock)
    group = load_group(tmp_path, "counter", SUM)
    double.inject(Response(200, "application/json", b'{"status":"PARTIAL","message":"cut"}'))
    assert not await engine.evaluate_group(group)
    assert state.outbox_depth() == 0
    assert metrics.registry.get_sample_value(
        "tempo_bridge_evaluation_failures_total", {"group": "g", "rule": "x", "reason": "partial"}
    ) == 1


async def test_gauge_writes_values_and_stale_markers(tmp_path: Path) -> None:
    clock = Clock(T0 + 120)
    double = TempoDouble(
        [span(T0 + 10, "a", 2.0), span(T0 + 20, "b", 1.0), span(T0 + 70, "b", 4.0)],
        clock=clock, query_end_cutoff=0,
    )
    engine, state, _ = make_engine(tmp_path, double, clock)
    group = load_group(tmp_path, "gauge", SUM)
    assert await engine.evaluate_group(group)
    clock.now += 60
    assert await engine.evaluate_group(group)
    rows = outbox(state)
    assert rows[:2] == [
        ({"__name__": "x", "model": "a"}, T0 + 60, 2.0),
        ({"__name__": "x", "model": "b"}, T0 + 60, 1.0),
    ]
    stale_labels, stale_ts, stale_value = rows[2]
    assert (stale_labels, stale_ts) == ({"__name__": "x", "model": "a"}, T0 + 120)
    assert is_stale_nan(stale_value)
    assert rows[3] == ({"__name__": "x", "model": "b"}, T0 + 120, 4.0)


async def test_limit_fails_the_whole_evaluation(tmp_path: Path) -> None:
    clock = Clock(T0 + 120)
    double = TempoDouble(
        [span(T0 + 10, "a"), span(T0 + 20, "b")], clock=clock, query_end_cutoff=0
    )
    engine, state, metrics = make_engine(tmp_path, double, clock)
    path = tmp_path / "rules.yaml"
    group = load_group(tmp_path, "counter", COUNT)
    path.write_text(path.read_text() + "        limit: 1\n")
    (group,) = load_rule_files([str(path)], min_query_offset=0)
    assert not await engine.evaluate_group(group)
    assert state.outbox_depth() == 0
    assert metrics.registry.get_sample_value(
        "tempo_bridge_evaluation_failures_total", {"group": "g", "rule": "x", "reason": "limit"}
    ) == 1


async def test_dry_run_counts_from_zero(tmp_path: Path) -> None:
    clock = Clock(T0 + 1000)
    double = TempoDouble(
        [span(T0 + 10, "a"), span(T0 + 70, "a"), span(T0 + 130, "a")],
        clock=clock, query_end_cutoff=0,
    )
    client = TempoClient("http://tempo", transport=transport(double))
    group = load_group(tmp_path, "counter", COUNT)
    samples = await dry_run(client, group, group.rules[0], T0 + 60, T0 + 180, 86400)
    assert [(ts // 1000, v) for _, ts, v in samples] == [
        (T0 + 60, 0.0), (T0 + 120, 1.0), (T0 + 180, 2.0)
    ]


@pytest.mark.parametrize("start", ["0s", "10m"])
async def test_new_rule_starts_at_start(tmp_path: Path, start: str) -> None:
    clock = Clock(T0 + 3600 + 30)
    double = TempoDouble([], clock=clock, query_end_cutoff=0)
    engine, _state, metrics = make_engine(tmp_path, double, clock)
    group = load_group(tmp_path, "counter", COUNT, start=start)
    assert await engine.evaluate_group(group)
    windows = metrics.registry.get_sample_value(
        "tempo_bridge_windows_evaluated_total", {"group": "g", "rule": "x"}
    )
    assert windows == (1 if start == "0s" else 11)


def load_settle_group(tmp_path: Path, settle: str) -> Group:
    path = tmp_path / "rules.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            groups:
              - name: g
                interval: 60s
                query_offset: 60s
                settle: {settle}
                rules:
                  - record: x
                    expr: '{COUNT}'
                    kind: counter
            """
        )
    )
    (group,) = load_rule_files([str(path)], min_query_offset=0)
    return group


async def test_late_spans_are_added_by_settle_passes_once(tmp_path: Path) -> None:
    clock = Clock(T0 + 120)
    double = TempoDouble([span(T0 + 10, "a")], clock=clock, query_end_cutoff=0)
    engine, state, metrics = make_engine(tmp_path, double, clock)
    group = load_settle_group(tmp_path, "[10m, 1h]")
    assert await engine.evaluate_group(group)  # records (T0, T0+60]: a=1
    double.add_spans([span(T0 + 20, "a"), span(T0 + 30, "late")])  # late arrivals
    clock.now = T0 + 60 + 600 + 30  # the first window is 10 minutes old
    assert await engine.evaluate_group(group)
    rule_id = group.rules[0].rule_id("g")
    stored = state.rule_state(rule_id)
    assert stored is not None
    assert stored.totals == {
        (("__name__", "x"), ("model", "a")): 2.0,
        (("__name__", "x"), ("model", "late")): 1.0,
    }
    assert stored.settled == {600: T0 + 60, 3600: T0}
    # the new series starts at 0 at the checkpoint the settle pass saw, then its total
    rows = outbox(state)
    late = [(ts, v) for labels, ts, v in rows if labels.get("model") == "late"]
    assert late[0] == (T0 + 60, 0.0)
    assert late[1:]
    assert all(v == 1.0 for _, v in late[1:])
    assert metrics.registry.get_sample_value(
        "tempo_bridge_settle_growth_total", {"group": "g", "rule": "x"}
    ) == 2
    # at 1 h the window is read again: nothing new, nothing counted twice
    clock.now = T0 + 60 + 3600 + 30
    assert await engine.evaluate_group(group)
    stored = state.rule_state(rule_id)
    assert stored is not None
    assert stored.totals[(("__name__", "x"), ("model", "a"))] == 2.0
    assert stored.settled[3600] >= T0 + 60
    # values of windows past the oldest settle age are no longer kept
    assert state.window_values(rule_id, 0, stored.settled[3600]) == {}


async def test_windows_caught_up_late_are_not_read_again(tmp_path: Path) -> None:
    clock = Clock(T0 + 120)
    double = TempoDouble([span(T0 + 10, "a")], clock=clock, query_end_cutoff=0)
    engine, state, _ = make_engine(tmp_path, double, clock)
    group = load_settle_group(tmp_path, "[10m]")
    assert await engine.evaluate_group(group)
    double.add_spans([span(T0 + 20, "a"), span(T0 + 70, "a")])  # one late, one new
    clock.now = T0 + 3600  # down for an hour
    before = len(double.requests)
    assert await engine.evaluate_group(group)
    # the window recorded before is settled and the missed hour read: one range query
    assert [r.path for r in double.requests[before:]] == ["/api/metrics/query_range"]
    assert double.requests[-1].params["start"] == str(T0)
    caught_up = state.rule_state(group.rules[0].rule_id("g"))
    assert caught_up is not None
    assert caught_up.totals == {(("__name__", "x"), ("model", "a")): 3.0}
    stored = state.rule_state(group.rules[0].rule_id("g"))
    assert stored is not None
    # windows older than 10 m when first read count as settled
    assert stored.settled[600] == T0 + 3600 - 600
    clock.now += 60
    assert await engine.evaluate_group(group)
    assert len(double.requests) == before + 3  # one settle read, one new window
    stored = state.rule_state(group.rules[0].rule_id("g"))
    assert stored is not None
    assert stored.totals == {(("__name__", "x"), ("model", "a")): 3.0}


async def test_one_settle_read_serves_every_age_after_a_downtime(tmp_path: Path) -> None:
    clock = Clock(T0 + 120)
    double = TempoDouble([span(T0 + 10, "a")], clock=clock, query_end_cutoff=0)
    engine, state, _ = make_engine(tmp_path, double, clock)
    group = load_settle_group(tmp_path, "[10m, 1h]")
    assert await engine.evaluate_group(group)  # records (T0, T0+60]
    double.add_spans([span(T0 + 20, "a"), span(T0 + 30, "late")])  # late arrivals
    clock.now = T0 + 3 * 3600  # down for three hours
    before = len(double.requests)
    assert await engine.evaluate_group(group)
    # the window recorded before the downtime is re-read with the catch-up: one query
    # of 179 windows (the extra leading bucket keeps a range query under 24 h anyway)
    assert [r.path for r in double.requests[before:]] == ["/api/metrics/query_range"]
    stored = state.rule_state(group.rules[0].rule_id("g"))
    assert stored is not None
    assert stored.totals == {
        (("__name__", "x"), ("model", "a")): 2.0,
        (("__name__", "x"), ("model", "late")): 1.0,
    }
    # both ages have settled everything old enough for them, read once
    assert stored.settled == {600: T0 + 3 * 3600 - 600, 3600: T0 + 2 * 3600}
    clock.now += 60
    before = len(double.requests)
    assert await engine.evaluate_group(group)
    assert len(double.requests) == before + 3  # a settle read per age, one new window


async def test_a_state_that_cannot_be_read_fails_the_evaluation_not_the_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock(T0 + 120)
    double = TempoDouble([span(T0 + 10, "a")], clock=clock, query_end_cutoff=0)
    engine, state, metrics = make_engine(tmp_path, double, clock)
    group = load_group(tmp_path, "counter", COUNT)

    def broken(rule_id: str) -> None:
        raise StateError("cannot read the state: database disk image is malformed")

    monkeypatch.setattr(state, "rule_state", broken)
    assert not await engine.evaluate_group(group)
    assert metrics.registry.get_sample_value(
        "tempo_bridge_evaluation_failures_total", {"group": "g", "rule": "x", "reason": "state"}
    ) == 1
    monkeypatch.undo()
    assert await engine.evaluate_group(group)
