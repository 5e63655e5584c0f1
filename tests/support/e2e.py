"""The daemon end to end: the shipped default rules with one-second windows, the Tempo double,
a real Prometheus; running until a checkpoint, and PromQL totals against the spans' truth."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from bridge.components import STATE_FILE
from bridge.daemon import Daemon
from bridge.state import State
from tests.doubles.tempo import RecordedRequest, Span, TempoDouble
from tests.support.daemon import make_daemon, running
from tests.support.files import default_rules
from tests.support.files import write_config as write_bridge_config
from tests.support.prometheus import PrometheusServer
from tests.support.servers import eventually
from tests.support.traffic import Key, span_truth

METRICS = {
    "openrouter_requests_total": None,
    "openrouter_cost_usd_total": "gen_ai.usage.total_cost",
    "openrouter_input_cost_usd_total": "gen_ai.usage.input_cost",
    "openrouter_output_cost_usd_total": "gen_ai.usage.output_cost",
    "openrouter_input_tokens_total": "gen_ai.usage.input_tokens",
    "openrouter_output_tokens_total": "gen_ai.usage.output_tokens",
    "openrouter_cached_input_tokens_total": "gen_ai.usage.cache_read.input_tokens",
}
"""Every default rule's record -> the span attribute it sums, or None for a count."""


@dataclass
class Env:
    """One end-to-end test's world: its directory, Prometheus, Tempo double and config;
    its series carry the external label ``test=name``."""

    tmp: Path
    prom: PrometheusServer
    tempo: TempoDouble
    config_path: Path
    name: str


def write_rules(path: Path, interval: int, query_offset: int, start: str) -> None:
    """The shipped default rules with a faster schedule (settled once, 600 windows on);
    expressions unchanged."""
    path.write_text(default_rules(interval=interval, query_offset=query_offset, start=start,
                                  settle=[interval * 600]))


def write_config(path: Path, tempo_url: str, write_url: str, name: str) -> None:
    """A config at ``path``: no Tempo delays, series labelled ``test=name``, rules.yaml
    and the state beside it."""
    write_bridge_config(path.parent, tempo_url, write_url, name=path.name,
                        remote_write={"external_labels": {"test": name}})


def truth(spans: list[Span], after: int, upto: int) -> dict[str, dict[Key, float]]:
    """Expected totals of the default rules for spans starting in ``(after, upto]``."""
    return span_truth(spans, METRICS, after, upto)


def promql_totals(prom: PrometheusServer, selector: str, at: float) -> dict[Key, float]:
    result = {}
    for item in prom.query(selector, time=at):
        labels = {k: v for k, v in item["metric"].items() if k not in ("__name__", "test")}
        result[tuple(sorted(labels.items()))] = float(item["value"][1])
    return result


def assert_totals_match(env: Env, expected: dict[str, dict[Key, float]], at: float) -> None:
    """Prometheus holds ``expected`` at ``at``: token and request counts exactly, costs
    within 1e-9 relative; a series not expected must be 0."""
    for record, series in expected.items():
        got = promql_totals(env.prom, f'{record}{{test="{env.name}"}}', at)
        want = dict(series)
        assert got.keys() >= want.keys(), record
        for key, value in got.items():
            expect = want.get(key, 0.0)
            if record.endswith("tokens_total") or record == "openrouter_requests_total":
                assert value == expect, (record, key)
            else:
                assert math.isclose(value, expect, rel_tol=1e-9, abs_tol=1e-12), (record, key)


async def run_daemon_until(env: Env, checkpoint_at_least: int) -> Daemon:
    """Run the daemon until every rule passed ``checkpoint_at_least``, all at the same
    checkpoint, and the outbox is empty; it is stopped when this returns or fails.

    The rules are one group: a tick evaluates them one after another, so a stop that
    lands in the middle of a tick (the next window came due as the last one was
    recorded) would leave them a window apart; the tests compare every rule with the
    truth up to one checkpoint."""
    async with running(make_daemon(env.config_path)) as daemon:

        def done() -> bool:
            rules = daemon.state.known_rules()
            return (len(rules) == len(METRICS)
                    and all(r.checkpoint >= checkpoint_at_least for r in rules)
                    and len({r.checkpoint for r in rules}) == 1
                    and daemon.state.outbox_samples() == 0)

        await eventually(done, f"every rule at checkpoint {checkpoint_at_least}", 60, 0.2)
    return daemon


def first_query_start(tempo: TempoDouble) -> int:
    """Where the rules began: the start of the first window they queried (the daemon,
    not the test, decides which window is the latest due one at start-up)."""
    return min(int(r.params["start"]) for r in tempo.requests if "/metrics/" in r.path)


def checkpoints(state_dir: Path) -> set[int]:
    """The checkpoints of every rule in the state (one value when they are in step)."""
    state = State(state_dir / STATE_FILE)
    try:
        return {rule.checkpoint for rule in state.known_rules()}
    finally:
        state.close()


async def run_half_hour_catch_up(env: Env, now: float) -> tuple[int, list[RecordedRequest]]:
    """Run the daemon, one-minute windows starting half an hour before ``now``, until it
    has caught up to the last window due at ``now``: the checkpoint it stopped at, and the
    metrics queries of its catch-up.

    A minute boundary may pass before the daemon stops: the tick for the window after
    that target (it starts there) is then recorded too, but it is not part of the
    catch-up, so its queries are left out."""
    write_rules(env.tmp / "rules.yaml", 60, 1, "30m")
    target = (int(now - 1) // 60) * 60
    await run_daemon_until(env, target)
    (checkpoint,) = checkpoints(env.tmp / "state")
    return checkpoint, [r for r in env.tempo.requests if r.path.startswith("/api/metrics/")
                        and int(r.params["start"]) < target]
