"""After a downtime longer than every settle age, one read settles the windows for all ages."""

from __future__ import annotations

from pathlib import Path

from tests.doubles.tempo import TempoDouble
from tests.test_engine import T0, Clock, load_settle_group, make_engine, span


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
    # one settle read of the window recorded before the downtime, then the catch-up
    assert [r.path for r in double.requests[before:]] == [
        "/api/metrics/query", "/api/metrics/query_range"
    ]
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
