"""Daemon: HTTP endpoints, reload (good, bad, removed and changed rules) and SIGHUP.

The wall clock is time-machine's, frozen at ``T0 + 0.5`` and moved by the tests; the
daemon, APScheduler and the Tempo double all read it. The double holds four spans a
second, so each one-second window's count is known exactly. The sender is idle: samples
stay in the outbox, where the tests read them.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from time_machine import TimeMachineFixture

from bridge.daemon import Daemon
from bridge.series import is_stale_nan
from bridge.state import RuleState
from tests.doubles.tempo import Span, TempoDouble
from tests.support.daemon import make_daemon, running
from tests.support.files import Rule, rules_yaml, write_config
from tests.support.servers import eventually, serving

T0 = 1795780800  # a multiple of 3600
COUNTER = '{ resource.service.name = "svc" } | count_over_time() by (span.model)'
GAUGE = '{ resource.service.name = "svc" } | max_over_time(span.cost) by (span.model)'
SPANS_PER_WINDOW = 4


def rules_text(counter_expr: str = COUNTER, with_gauge: bool = True) -> str:
    rules = [Rule("requests_total", counter_expr)]
    if with_gauge:
        rules.append(Rule("biggest", GAUGE, "gauge"))
    return rules_yaml(*rules)


@dataclass
class Bridge:
    """The running daemon, its Tempo double, rule file and HTTP client, and the clock."""

    daemon: Daemon
    tempo: TempoDouble
    rules: Path
    http: httpx.AsyncClient
    clock: TimeMachineFixture

    def rule_ids(self) -> dict[str, str]:
        return {record: rule_id for rule_id, _, record, _ in self.daemon.state.known_rules()}

    def stored(self, rule_id: str) -> RuleState:
        stored = self.daemon.state.rule_state(rule_id)
        assert stored is not None
        return stored

    async def recorded(self, record: str, checkpoint: int, other_than: str = "") -> str:
        """Wait until a rule recording ``record`` (not ``other_than``) has recorded the
        window ending at ``checkpoint``; its id."""

        def found() -> str | None:
            for rule_id, _, name, _ in self.daemon.state.known_rules():
                state = self.daemon.state.rule_state(rule_id)
                if name == record and rule_id != other_than and state is not None \
                        and state.checkpoint >= checkpoint:
                    return rule_id
            return None

        await eventually(found, f"{record} recorded up to {checkpoint - T0:+d} s")
        rule_id = found()
        assert rule_id is not None
        assert self.stored(rule_id).checkpoint == checkpoint
        return rule_id

    def advance(self, seconds: float) -> None:
        """Move the clock on and let the scheduler see it (its ticks run what is due)."""
        self.clock.shift(seconds)
        self.daemon.scheduler.wakeup()


@pytest.fixture
async def bridge(tmp_path: Path, time_machine: TimeMachineFixture) -> AsyncIterator[Bridge]:
    time_machine.move_to(T0 + 0.5, tick=False)
    tempo = TempoDouble(
        [
            Span(start_ns=T0 * 10**9 + 500_000_000 + i * 10**9 // SPANS_PER_WINDOW,
                 attributes={"model": "m", "cost": 1.0}, resource={"service.name": "svc"})
            for i in range(-20, 200)
        ],
        query_end_cutoff=0,
    )
    rules = tmp_path / "rules.yaml"
    rules.write_text(rules_text())
    async with serving(tempo) as url:
        daemon = make_daemon(write_config(tmp_path, url))
        daemon.sender.run = _idle  # type: ignore[method-assign]  # keep samples in the outbox
        async with running(daemon), httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{daemon.web.port}"
        ) as http:
            yield Bridge(daemon, tempo, rules, http, time_machine)


async def _idle(idle: float = 5.0) -> None:
    await asyncio.Event().wait()


async def test_health_ready_and_metrics(bridge: Bridge) -> None:
    assert (await bridge.http.get("/-/healthy")).status_code == 200
    assert (await bridge.http.get("/-/ready")).status_code == 200
    # at start, the latest due window: (T0 - 2, T0 - 1], read 1 s after its end
    await bridge.recorded("requests_total", T0 - 1)
    text = (await bridge.http.get("/metrics")).text
    assert 'tempo_bridge_windows_evaluated_total{group="g",rule="requests_total"} 1.0' in text
    assert "tempo_bridge_rules 2.0" in text
    assert "tempo_bridge_config_last_reload_successful 1.0" in text
    assert (await bridge.http.get("/-/reload")).status_code == 405  # POST only


async def test_a_bad_reload_keeps_the_running_rules(bridge: Bridge) -> None:
    before = bridge.daemon.scheduler.groups
    bridge.rules.write_text("groups:\n  - name: g\n    interval: 7s\n    rules: []\n")
    answer = await bridge.http.post("/-/reload")
    assert answer.status_code == 400
    assert f"{bridge.rules}:3:15: " in answer.text
    assert "divide" in answer.text
    assert bridge.daemon.scheduler.groups == before
    text = (await bridge.http.get("/metrics")).text
    assert "tempo_bridge_config_last_reload_successful 0.0" in text


async def test_reload_retires_gauges_and_restarts_changed_counters(bridge: Bridge) -> None:
    daemon = bridge.daemon
    await bridge.recorded("requests_total", T0 - 1)
    await bridge.recorded("biggest", T0 - 1)
    bridge.advance(2)  # now T0 + 2.5: the windows up to T0 + 1 are due
    counter = await bridge.recorded("requests_total", T0 + 1)
    gauge = await bridge.recorded("biggest", T0 + 1)
    ids = bridge.rule_ids()
    assert bridge.stored(gauge).live_gauges
    old_totals = bridge.stored(counter).totals
    assert sum(old_totals.values()) == 3 * SPANS_PER_WINDOW  # (T0 - 2, T0 + 1]

    # an unchanged reload keeps everything
    assert (await bridge.http.post("/-/reload")).status_code == 200
    assert bridge.rule_ids() == ids
    # a change of whitespace only is no change
    bridge.rules.write_text(
        rules_text(COUNTER.replace("count_over_time()", "count_over_time() "), with_gauge=False)
    )
    assert (await bridge.http.post("/-/reload")).status_code == 200
    assert [g.rules[0].expr for g in daemon.scheduler.groups] == [COUNTER]
    # the counter's expression changes, the gauge goes away
    bridge.rules.write_text(rules_text(COUNTER.replace("= ", "=~ "), with_gauge=False))
    answer = await bridge.http.post("/-/reload")
    assert answer.status_code == 200
    stale = [r for r in daemon.state.outbox_head(100000) if is_stale_nan(r.value)]
    assert {dict(r.labels)["__name__"] for r in stale} == {"biggest"}
    assert bridge.stored(gauge).live_gauges == set()

    # the changed rule is a rule of its own: it starts with the latest due window, at once
    fresh = await bridge.recorded("requests_total", T0 + 1, other_than=counter)
    assert sum(bridge.stored(fresh).totals.values()) == SPANS_PER_WINDOW  # (T0, T0 + 1]
    bridge.advance(3)
    await bridge.recorded("requests_total", T0 + 4, other_than=counter)
    # the new rule counts only the windows from the change on, not the old rule's total
    assert sum(bridge.stored(fresh).totals.values()) == 4 * SPANS_PER_WINDOW  # (T0, T0 + 4]
    # the old rule's totals stay in the state, no longer evaluated
    old = bridge.stored(counter)
    assert (old.checkpoint, old.totals) == (T0 + 1, old_totals)


async def test_sighup_reloads(bridge: Bridge) -> None:
    bridge.rules.write_text(rules_text(with_gauge=False))
    os.kill(os.getpid(), signal.SIGHUP)
    await eventually(
        lambda: sum(len(g.rules) for g in bridge.daemon.scheduler.groups) == 1, "the reload"
    )
    assert [r.record for g in bridge.daemon.scheduler.groups for r in g.rules] == [
        "requests_total"
    ]
