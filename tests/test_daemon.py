"""Daemon: HTTP endpoints, reload (good, bad, removed and changed rules) and SIGHUP."""

from __future__ import annotations

import asyncio
import os
import signal
import textwrap
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import structlog
import structlog.testing

from bridge.components import load_rules
from bridge.config import load_config
from bridge.daemon import Daemon
from bridge.engine import rule_key
from bridge.evaluation import Update
from bridge.series import is_stale_nan
from bridge.state import RuleKey
from tests.doubles.tempo import Span, TempoDouble
from tests.support.outbox import queued

COUNTER = '{ resource.service.name = "svc" } | count_over_time() by (span.model)'
GAUGE = '{ resource.service.name = "svc" } | max_over_time(span.cost) by (span.model)'


def rules_text(counter_expr: str = COUNTER, with_gauge: bool = True) -> str:
    gauge = textwrap.indent(
        textwrap.dedent(
            f"""\
            - record: biggest
              expr: '{GAUGE}'
              kind: gauge
            """
        ),
        "      ",
    )
    return textwrap.dedent(
        f"""\
        groups:
          - name: g
            interval: 1s
            query_offset: 1s
            settle: [60s]
            rules:
              - record: requests_total
                expr: '{counter_expr}'
                kind: counter
        """
    ) + (gauge if with_gauge else "")


@dataclass
class Running:
    daemon: Daemon
    tempo: TempoDouble
    rules: Path
    http: httpx.AsyncClient
    task: asyncio.Task[None]


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    now = time.time()
    tempo = TempoDouble(
        [
            Span(start_ns=int((now + i / 4) * 1e9), attributes={"model": "m", "cost": 1.0},
                 resource={"service.name": "svc"})
            for i in range(-20, 200)
        ],
        query_end_cutoff=0,
    )
    url = await tempo.start()
    rules = tmp_path / "rules.yaml"
    rules.write_text(rules_text())
    config_path = tmp_path / "bridge.yaml"
    config_path.write_text(
        textwrap.dedent(
            f"""\
            tempo: {{url: "{url}", query_end_cutoff: 0s, ingest_delay: 0s}}
            remote_write: {{url: "http://127.0.0.1:9/api/v1/write"}}
            state_dir: state
            rule_files: [rules.yaml]
            web: {{listen_address: "127.0.0.1:0"}}
            """
        )
    )
    config = load_config(config_path)
    daemon = Daemon(config_path, config, load_rules(config))
    daemon.sender.run = _idle  # type: ignore[method-assign]  # keep samples in the outbox
    task = asyncio.create_task(daemon.run())
    for _ in range(100):
        await asyncio.sleep(0.05)
        if daemon.web.port:
            break
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{daemon.web.port}") as http:
        await wait_ready(http)
        yield Running(daemon, tempo, rules, http, task)
    daemon.stop()
    await task
    await tempo.stop()


async def _idle(idle: float = 5.0) -> None:
    await asyncio.Event().wait()


async def wait_ready(http: httpx.AsyncClient) -> None:
    for _ in range(100):
        try:
            if (await http.get("/-/ready")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.05)
    pytest.fail("the daemon never became ready")


def rule_keys(daemon: Daemon) -> dict[str, RuleKey]:
    return {k.key.record: k.key for k in daemon.state.known_rules() if k.removed_at is None}


async def test_health_ready_and_metrics(running: Running) -> None:
    assert (await running.http.get("/-/healthy")).status_code == 200
    assert (await running.http.get("/-/ready")).status_code == 200
    await asyncio.sleep(1.5)
    text = (await running.http.get("/metrics")).text
    assert 'tempo_bridge_windows_evaluated_total{group="g",rule="requests_total"}' in text
    assert "tempo_bridge_rules 2.0" in text
    assert "tempo_bridge_config_last_reload_successful 1.0" in text
    assert (await running.http.get("/-/reload")).status_code == 405  # POST only


async def test_a_bad_reload_keeps_the_running_rules(running: Running) -> None:
    before = running.daemon.scheduler.groups
    running.rules.write_text("groups:\n  - name: g\n    interval: 7s\n    rules: []\n")
    answer = await running.http.post("/-/reload")
    assert answer.status_code == 400
    assert f"{running.rules}:3:15: " in answer.text
    assert "divide" in answer.text
    assert running.daemon.scheduler.groups == before
    text = (await running.http.get("/metrics")).text
    assert "tempo_bridge_config_last_reload_successful 0.0" in text


async def test_reload_retires_removed_rules_and_restarts_changed_counters(
    running: Running,
) -> None:
    daemon = running.daemon
    await asyncio.sleep(2.5)
    keys = rule_keys(daemon)
    old_counter = daemon.state.load(keys["requests_total"])
    gauge = daemon.state.load(keys["biggest"])
    assert old_counter is not None
    assert gauge is not None
    assert gauge.live
    # an unchanged reload keeps everything
    assert (await running.http.post("/-/reload")).status_code == 200
    assert rule_keys(daemon) == keys
    # the counter's expression changes, the gauge goes away
    running.rules.write_text(
        rules_text(COUNTER.replace("count_over_time()", "count_over_time() "), with_gauge=False)
    )
    assert (await running.http.post("/-/reload")).status_code == 200  # whitespace only
    assert [g.rules[0].expr for g in daemon.scheduler.groups] == [COUNTER]
    assert rule_keys(daemon)["requests_total"] == keys["requests_total"]
    running.rules.write_text(rules_text(COUNTER.replace("= ", "=~ "), with_gauge=False))
    answer = await running.http.post("/-/reload")
    assert answer.status_code == 200
    # both retired rules end their series with stale markers at their next window end
    stale = [labels for labels, _, value in queued(daemon.state) if is_stale_nan(value)]
    assert {dict(labels)["__name__"] for labels in stale} >= {"biggest"}
    retired = daemon.state.load(keys["biggest"])
    assert retired is not None
    assert retired.live == frozenset()
    await asyncio.sleep(1.5)
    new_keys = rule_keys(daemon)
    assert new_keys["requests_total"] != keys["requests_total"]
    fresh = daemon.state.load(new_keys["requests_total"])
    assert fresh is not None
    old = daemon.state.load(keys["requests_total"])
    assert old is not None
    # the old rule's totals stay in the state, no longer evaluated; the new one starts
    # anew where the old one ended
    await asyncio.sleep(1.5)
    still = daemon.state.load(keys["requests_total"])
    assert still is not None
    assert (still.checkpoint, still.totals) == (old.checkpoint, old.totals)
    assert fresh.checkpoint > old_counter.checkpoint
    removed = {k.key.record: k.removed_at for k in daemon.state.known_rules()
               if k.removed_at is not None}
    assert set(removed) == {"requests_total", "biggest"}


async def test_sighup_reloads(running: Running) -> None:
    running.rules.write_text(rules_text(with_gauge=False))
    os.kill(os.getpid(), signal.SIGHUP)
    for _ in range(50):
        await asyncio.sleep(0.05)
        if sum(len(g.rules) for g in running.daemon.scheduler.groups) == 1:
            break
    assert [r.record for g in running.daemon.scheduler.groups for r in g.rules] == [
        "requests_total"
    ]


async def test_a_sender_that_fails_is_restarted_and_the_bridge_is_unready_meanwhile(
    tmp_path: Path,
) -> None:
    config_path = tmp_path / "bridge.yaml"
    (tmp_path / "rules.yaml").write_text(rules_text(with_gauge=False))
    config_path.write_text(
        "tempo: {url: 'http://127.0.0.1:9', query_end_cutoff: 0s, ingest_delay: 0s}\n"
        "remote_write: {url: 'http://127.0.0.1:9/api/v1/write'}\n"
        "state_dir: state\nrule_files: [rules.yaml]\n"
        "web: {listen_address: '127.0.0.1:0'}\n"
    )
    config = load_config(config_path)
    backoff = asyncio.Event()
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await backoff.wait()

    daemon = Daemon(config_path, config, load_rules(config), sleep=sleep)
    failures = iter([RuntimeError("disk on fire")])

    async def run_once(idle: float = 5.0) -> None:
        error = next(failures, None)
        if error is not None:
            raise error
        await asyncio.Event().wait()

    daemon.sender.run = run_once  # type: ignore[method-assign]
    task = asyncio.create_task(daemon.run())
    try:
        for _ in range(200):
            await asyncio.sleep(0.01)
            if waits:
                break
        # the sender died: logged, counted, not ready, and started again after the backoff
        assert waits == [1.0]
        assert not daemon.ready
        assert daemon.metrics.sender_restarts._value.get() == 1
        assert not daemon.status.snapshot().sender_alive
        backoff.set()
        for _ in range(200):
            await asyncio.sleep(0.01)
            if daemon.ready:
                break
        assert daemon.ready
        assert daemon.status.snapshot().sender_alive
    finally:
        daemon.stop()
        await task


async def test_removed_rules_are_forgotten_after_the_state_retention(tmp_path: Path) -> None:
    config_path = tmp_path / "bridge.yaml"
    rules = tmp_path / "rules.yaml"
    rules.write_text(rules_text())
    config_path.write_text(
        "tempo: {url: 'http://127.0.0.1:9', query_end_cutoff: 0s, ingest_delay: 0s}\n"
        "remote_write: {url: 'http://127.0.0.1:9/api/v1/write'}\n"
        "state_dir: state\nrule_files: [rules.yaml]\nstate_retention: 2d\n"
        "web: {listen_address: '127.0.0.1:0'}\n"
    )
    config = load_config(config_path)
    now = [1795780800.0]
    daemon = Daemon(config_path, config, load_rules(config), clock=lambda: now[0])
    # the state knows both rules, as if they had run
    for group in daemon._groups:
        for rule in group.rules:
            daemon.state.commit(rule_key(group, rule), Update(1795780740, frozenset(), {}))
    task = asyncio.create_task(daemon.run())
    try:
        for _ in range(200):
            await asyncio.sleep(0.01)
            if daemon.ready:
                break
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
    finally:
        daemon.stop()
        await task


async def test_tempo_s_clock_is_watched_on_every_answer(tmp_path: Path) -> None:
    tempo = TempoDouble(clock=lambda: time.time() - 120, query_end_cutoff=0)  # 2 min behind
    url = await tempo.start()
    config_path = tmp_path / "bridge.yaml"
    (tmp_path / "rules.yaml").write_text(rules_text(with_gauge=False))
    config_path.write_text(
        f"tempo: {{url: '{url}', query_end_cutoff: 0s, ingest_delay: 0s}}\n"
        "remote_write: {url: 'http://127.0.0.1:9/api/v1/write'}\n"
        "state_dir: state\nrule_files: [rules.yaml]\nweb: {listen_address: '127.0.0.1:0'}\n"
    )
    config = load_config(config_path)
    daemon = Daemon(config_path, config, load_rules(config))
    daemon.sender.run = _idle  # type: ignore[method-assign]
    with structlog.testing.capture_logs() as events:
        task = asyncio.create_task(daemon.run())
        for _ in range(300):
            await asyncio.sleep(0.01)
            if daemon.status.snapshot().clock is not None:
                break
        await asyncio.sleep(1.2)  # more answers, the same skew
    try:
        clock = daemon.status.snapshot().clock
        assert clock is not None
        assert clock.level == "FAIL"  # 2 minutes exceed the 1 s margin of query_offset
        assert -121.5 < clock.skew < -118.5
        skew = daemon.metrics.registry.get_sample_value("tempo_bridge_tempo_clock_skew_seconds")
        assert skew is not None
        assert -121.5 < skew < -118.5
    finally:
        daemon.stop()
        await task
        await tempo.stop()
    assert len(tempo.requests) > 1
    clock_events = [e for e in events if e.get("event") == "Tempo's clock"]
    assert len(clock_events) == 1  # logged when it changed, not at every answer
    assert clock_events[0]["log_level"] == "error"
    assert clock_events[0]["level"] == "FAIL"
    assert "raise query_offset" in clock_events[0]["message"]
