"""Components built from the config, in one place: the rules, the Tempo client, the
remote-write client and the state. The daemon and every command use these."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from bridge.config import Config
from bridge.remote_write import RemoteWriteClient
from bridge.rulefmt import load_rule_files
from bridge.rules import Group
from bridge.series import TempoKey
from bridge.state import State
from bridge.tempo import ClockSkew, TempoClient
from bridge.windows import Limits
from bridge.worker import Worker

STATE_FILE = "tempo-bridge.sqlite"
"""The SQLite file in ``state_dir``."""


def load_rules(config: Config) -> list[Group]:
    """The rule groups named by ``config.rule_files``; raises ConfigError."""
    return load_rule_files(config.rule_files, min_query_offset=config.tempo.min_query_offset)


def tempo_client(
    config: Config, transport: httpx.AsyncBaseTransport | None = None,
    on_clock_skew: Callable[[ClockSkew], None] | None = None, worker: Worker | None = None,
    canonical: Callable[[TempoKey], TempoKey] | None = None,
) -> TempoClient:
    """A Tempo client with the config's URL, tenant, credentials and timeout (``worker``:
    the thread that parses its answers, as the daemon has; ``canonical``: the state's
    own equal label set, see :meth:`bridge.state.State.canonical`)."""
    return TempoClient(
        config.tempo.url,
        tenant=config.tempo.tenant,
        headers=config.tempo.auth_headers(),
        timeout=config.tempo.timeout,
        transport=transport,
        on_clock_skew=on_clock_skew,
        worker=worker,
        canonical=canonical,
    )


def receiver_client(
    config: Config, transport: httpx.AsyncBaseTransport | None = None
) -> RemoteWriteClient:
    """A remote-write client with the config's URL, credentials and timeout."""
    section = config.remote_write
    return RemoteWriteClient(
        section.url, headers=section.auth_headers(), timeout=section.timeout,
        transport=transport,
    )


def open_state(config: Config, *, exclusive: bool = False) -> State:
    """The state database in ``config.state_dir`` (``exclusive``: as its one owner)."""
    return State(config.state_dir / STATE_FILE, exclusive=exclusive)


def limits(config: Config) -> Limits:
    """What Tempo accepts in one range query, as the config mirrors it."""
    return Limits(max_duration=int(config.tempo.max_duration),
                  max_intervals=config.tempo.max_intervals, max_points=config.tempo.max_points)
