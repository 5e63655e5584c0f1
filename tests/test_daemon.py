"""Daemon: HTTP endpoints, reload (good, bad, removed and changed rules), SIGHUP, the sender
restarted, removed rules forgotten, Tempo's clock watched.

Most tests run on time-machine's wall clock, frozen and moved by the test; the daemon,
APScheduler and the Tempo double all read it. The double holds four spans a second, so
each one-second window's count is known exactly. The sender is idle where the tests read
the outbox.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog.testing
from time_machine import TimeMachineFixture

from bridge.daemon import Daemon
from bridge.engine import rule_key
from bridge.evaluation import Stored, Update, evaluate
from bridge.series import is_stale_nan
from bridge.state import KnownRule, RuleKey, State
from tests.doubles.tempo import Span, TempoDouble
from tests.support.daemon import make_daemon, running
from tests.support.files import Rule, rules_yaml, write_config
from tests.support.outbox import queued
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


def total(stored: Stored) -> float:
    return sum(t.value for t in stored.totals.values())


@dataclass
class Bridge:
    """The running daemon, its Tempo double, rule file and HTTP client, and the clock."""

    daemon: Daemon
    tempo: TempoDouble
    rules: Path
    http: httpx.AsyncClient
    clock: TimeMachineFixture

    def keys(self) -> dict[str, RuleKey]:
        """The rules in use (not removed), by record."""
        return {k.key.record: k.key for k in self.daemon.state.known_rules()
                if k.removed_at is None}

    def stored(self, key: RuleKey) -> Stored:
        stored = self.daemon.state.load(key)
        assert stored is not None
        return stored

    async def recorded(self, record: str, checkpoint: int) -> RuleKey:
        """Wait until the rule in use recording ``record`` has recorded the window ending
        at ``checkpoint``; its key."""

        def found() -> RuleKey | None:
            for known in self.daemon.state.known_rules():
                if (known.key.record == record and known.removed_at is None
                        and known.checkpoint >= checkpoint):
                    return known.key
            return None

        await eventually(found, f"{record} recorded up to T0{checkpoint - T0:+d}")
        key = found()
        assert key is not None
        assert self.stored(key).checkpoint == checkpoint
        return key

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
            # it listens before it is ready: its start reads the state on the state's thread
            await eventually(lambda: daemon.ready, "the daemon ready")
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


async def test_reload_retires_removed_rules_and_restarts_changed_counters(
    bridge: Bridge,
) -> None:
    daemon = bridge.daemon
    await bridge.recorded("requests_total", T0 - 1)
    await bridge.recorded("biggest", T0 - 1)
    bridge.advance(2)  # now T0 + 2.5: the windows up to T0 + 1 are due
    counter = await bridge.recorded("requests_total", T0 + 1)
    gauge = await bridge.recorded("biggest", T0 + 1)
    keys = bridge.keys()
    assert bridge.stored(gauge).live
    old = bridge.stored(counter)
    assert total(old) == 3 * SPANS_PER_WINDOW  # (T0 - 2, T0 + 1]

    # an unchanged reload keeps everything
    assert (await bridge.http.post("/-/reload")).status_code == 200
    assert bridge.keys() == keys
    # a change of whitespace only is no change
    bridge.rules.write_text(
        rules_text(COUNTER.replace("count_over_time()", "count_over_time() "), with_gauge=False)
    )
    assert (await bridge.http.post("/-/reload")).status_code == 200
    assert [g.rules[0].expr for g in daemon.scheduler.groups] == [COUNTER]
    assert bridge.keys()["requests_total"] == counter
    # the counter's expression changes, the gauge goes away
    bridge.rules.write_text(rules_text(COUNTER.replace("= ", "=~ "), with_gauge=False))
    answer = await bridge.http.post("/-/reload")
    assert answer.status_code == 200
    # both retired rules end their series with stale markers at their next window end
    stale = [labels for labels, _, value in queued(daemon.state) if is_stale_nan(value)]
    assert {dict(labels)["__name__"] for labels in stale} >= {"biggest"}
    assert bridge.stored(gauge).live == frozenset()
    removed = {k.key.record for k in daemon.state.known_rules() if k.removed_at is not None}
    assert removed == {"requests_total", "biggest"}

    # the changed counter is a rule of its own, beginning where the old one ended (T0 + 1)
    bridge.advance(3)  # now T0 + 5.5
    fresh = await bridge.recorded("requests_total", T0 + 4)
    assert fresh != counter
    assert total(bridge.stored(fresh)) == 3 * SPANS_PER_WINDOW  # (T0 + 1, T0 + 4]
    # the old rule's totals stay in the state, no longer evaluated
    still = bridge.stored(counter)
    assert (still.checkpoint, still.totals) == (T0 + 1, old.totals)


async def test_a_reload_reads_the_state_on_its_thread(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload looks in the state for rules gone from the files on the state's thread,
    where it waits for a commit under way instead of holding the event loop."""
    state = bridge.daemon.state
    threads: list[str] = []
    known_rules = state.known_rules

    def noted() -> list[KnownRule]:
        threads.append(threading.current_thread().name)
        return known_rules()

    monkeypatch.setattr(state, "known_rules", noted)
    assert (await bridge.http.post("/-/reload")).status_code == 200
    assert threads
    assert all(name.startswith("tempo-bridge-state") for name in threads)


async def test_sighup_reloads(bridge: Bridge) -> None:
    bridge.rules.write_text(rules_text(with_gauge=False))
    os.kill(os.getpid(), signal.SIGHUP)
    await eventually(
        lambda: sum(len(g.rules) for g in bridge.daemon.scheduler.groups) == 1, "the reload"
    )
    assert [r.record for g in bridge.daemon.scheduler.groups for r in g.rules] == [
        "requests_total"
    ]


async def test_a_sender_that_fails_is_restarted_and_the_bridge_is_unready_meanwhile(
    tmp_path: Path,
) -> None:
    (tmp_path / "rules.yaml").write_text(rules_text(with_gauge=False))
    backoff = asyncio.Event()
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await backoff.wait()

    daemon = make_daemon(write_config(tmp_path, "http://127.0.0.1:9"), sleep=sleep)
    failures = iter([RuntimeError("disk on fire")])

    async def run_once(idle: float = 5.0) -> None:
        error = next(failures, None)
        if error is not None:
            raise error
        await asyncio.Event().wait()

    daemon.sender.run = run_once  # type: ignore[method-assign]
    async with running(daemon):
        await eventually(lambda: waits, "the sender's restart backoff")
        # the sender died: logged, counted, not ready, and started again after the backoff
        assert waits == [1.0]
        assert not daemon.ready
        assert daemon.metrics.sender_restarts._value.get() == 1
        assert not daemon.status.snapshot().sender_alive
        backoff.set()
        await eventually(lambda: daemon.ready, "the bridge ready again")
        assert daemon.status.snapshot().sender_alive


async def test_removed_rules_are_forgotten_after_the_state_retention(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(rules_text())
    config_path = write_config(tmp_path, "http://127.0.0.1:9", state_retention="2d")
    now = [1795780800.0]
    daemon = make_daemon(config_path, clock=lambda: now[0])
    # the state knows both rules, as if they had run
    for group in daemon._groups:
        for rule in group.rules:
            daemon.state.commit(rule_key(group, rule), Update(1795780740, frozenset(), {}))
    async with running(daemon):
        await eventually(lambda: daemon.ready, "the bridge ready")
        rules.write_text(rules_text(with_gauge=False))
        assert await daemon.reload() is None
        removed = [k for k in daemon.state.known_rules() if k.removed_at is not None]
        assert [k.key.record for k in removed] == ["biggest"]
        now[0] += 86400
        await daemon._maintain()
        assert len(daemon.state.known_rules()) == 2  # kept for the retention
        now[0] += 86400 + 1
        await daemon._maintain()
        assert [k.key.record for k in daemon.state.known_rules()] == ["requests_total"]
        assert daemon.metrics.rules_forgotten._value.get() == 1


async def test_tempo_s_clock_is_watched_on_every_answer(
    tmp_path: Path, time_machine: TimeMachineFixture
) -> None:
    time_machine.move_to(T0 + 0.5, tick=False)
    tempo = TempoDouble(clock=lambda: time.time() - 120, query_end_cutoff=0)  # 2 min behind
    (tmp_path / "rules.yaml").write_text(rules_text(with_gauge=False))
    with structlog.testing.capture_logs() as events:
        async with serving(tempo) as url:
            daemon = make_daemon(write_config(tmp_path, url))
            daemon.sender.run = _idle  # type: ignore[method-assign]
            async with running(daemon):
                await eventually(lambda: daemon.status.snapshot().clock is not None,
                                 "Tempo's clock on the status board")
                answered = len(tempo.requests)
                time_machine.shift(2)  # more answers, the same skew
                daemon.scheduler.wakeup()
                await eventually(lambda: len(tempo.requests) > answered, "another answer")
                clock = daemon.status.snapshot().clock
                skew = daemon.metrics.registry.get_sample_value(
                    "tempo_bridge_tempo_clock_skew_seconds")
    assert clock is not None
    assert clock.level == "FAIL"  # 2 minutes exceed the 1 s margin of query_offset
    assert -121.5 < clock.skew < -118.5
    assert skew is not None
    assert -121.5 < skew < -118.5
    clock_events = [e for e in events if e.get("event") == "Tempo's clock"]
    assert len(clock_events) == 1  # logged when it changed, not at every answer
    assert clock_events[0]["log_level"] == "error"
    assert clock_events[0]["level"] == "FAIL"
    assert "raise query_offset" in clock_events[0]["message"]


@pytest.mark.parametrize("stage", ["evaluation", "commit"])
async def test_the_bridge_answers_while_a_rule_is_evaluated_and_committed(
    tmp_path: Path, time_machine: TimeMachineFixture, monkeypatch: pytest.MonkeyPatch,
    stage: str,
) -> None:
    """A rule of a million series takes half a minute to parse and evaluate, and its first
    commit stores two million label sets (about 12 s): meanwhile the event loop must ping
    the systemd watchdog (30 s), answer health checks and scrapes. Each stage is held here
    until the health check has been answered."""
    time_machine.move_to(T0 + 0.5, tick=False)
    tempo = TempoDouble(
        [Span(start_ns=(T0 - 1) * 10**9 + 500_000_000, attributes={"model": "m"},
              resource={"service.name": "svc"})],
        query_end_cutoff=0,
    )
    (tmp_path / "rules.yaml").write_text(rules_text(with_gauge=False))
    started, release = threading.Event(), threading.Event()
    released: list[bool] = []

    def hold() -> None:
        started.set()
        released.append(release.wait(10.0))  # on the event loop, it would wait in vain

    def held_evaluation(*args: Any, **kwargs: Any) -> Any:
        hold()
        return evaluate(*args, **kwargs)

    commit = State.commit

    def held_commit(self: State, key: RuleKey, update: Update, *args: Any, **kwargs: Any) -> Any:
        if update.stats.recorded:  # the evaluation's, not a new rule's first checkpoint
            hold()
        return commit(self, key, update, *args, **kwargs)

    if stage == "evaluation":
        monkeypatch.setattr("bridge.engine.evaluate", held_evaluation)
    else:
        monkeypatch.setattr(State, "commit", held_commit)
    async with serving(tempo) as url:
        daemon = make_daemon(write_config(tmp_path, url))
        daemon.sender.run = _idle  # type: ignore[method-assign]
        async with running(daemon), httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{daemon.web.port}"
        ) as http:
            await eventually(started.is_set, f"the {stage} started")
            assert (await http.get("/-/healthy")).status_code == 200
            assert "tempo_bridge_rules 1.0" in (await http.get("/metrics")).text
            release.set()
            key = rule_key(daemon._groups[0], daemon._groups[0].rules[0])
            await eventually(lambda: getattr(daemon.state.load(key), "checkpoint", 0) == T0 - 1,
                             "the window held recorded")
    assert released == [True]
