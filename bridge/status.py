"""Status: what the bridge is doing now, for the status page and ``/api/v1/status``.

The engine, the sender and the daemon record into one :class:`StatusBoard`; the web
server reads a :meth:`StatusBoard.snapshot`. Plain data, no I/O, nothing secret: URLs
are kept without credentials and errors are the texts already logged.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field


@dataclass
class Evaluation:
    """One finished evaluation of a rule."""

    at: float
    """Unix time it finished."""
    duration: float
    """Seconds it took: its Tempo queries, the evaluation and the commits."""
    series: int
    """Series the rule holds after it (counter totals, or live gauge series)."""
    queries: dict[str, int]
    """Tempo queries it sent, by kind (``instant``, ``range``); empty when none were due."""
    windows: int
    """Windows it recorded."""
    error: str | None = None
    """The failure, verbatim as logged; None when it succeeded."""
    reason: str | None = None
    """The failure's reason token (``http_500``, ``timeout``, ``state`` ...)."""


@dataclass
class RuleStatus:
    """One rule of a group, as last evaluated."""

    record: str
    kind: str
    expr: str
    labels: dict[str, str] = field(default_factory=dict)
    """The rule's own labels (the group's are on the group)."""
    checkpoint: int | None = None
    """End of the last window recorded: data is complete up to here. None: never run."""
    windows_behind: int = 0
    settle: dict[int, int] = field(default_factory=dict)
    """Per settle age (seconds): the end of the last window read again at that age."""
    last: Evaluation | None = None
    last_error: Evaluation | None = None
    """The latest failed evaluation, kept after later successes."""


@dataclass
class GroupStatus:
    name: str
    file: str
    interval: int
    query_offset: int
    settle: tuple[int, ...]
    tenant: str | None
    rules: list[RuleStatus]
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class ReceiverAnswer:
    """The receiver's last answer to a remote-write request."""

    at: float
    status: int | None
    """HTTP status; None when it could not be reached."""
    error: str | None
    """The body or network error of a failure, verbatim (truncated as logged)."""


@dataclass
class TempoContact:
    """Tempo's last answer to a query."""

    at: float
    ok: bool
    error: str | None = None
    reason: str | None = None
    """The failure's reason token (``network``, ``timeout``, ``http_503`` ...)."""
    reachable: bool = True
    """Whether Tempo answered at all: False for a network error or a timeout."""


@dataclass
class Clock:
    """Tempo's clock against this host's, from the ``Date`` header of its latest answer."""

    at: float
    skew: float
    """Tempo's minus the host's, seconds (the middle of what the header allows)."""
    certain: float
    """How far apart the clocks surely are; 0 when they may agree."""
    level: str
    """``OK``, ``WARN`` (it eats into the groups' margin) or ``FAIL`` (it exceeds it)."""
    message: str


@dataclass
class Reload:
    at: float
    ok: bool
    errors: str | None = None


@dataclass
class Status:
    """Everything the status page shows, as of one moment."""

    version: str
    started: float
    config_file: str
    groups: list[GroupStatus] = field(default_factory=list)
    outbox_samples: int = 0
    outbox_oldest_age: float = 0.0
    outbox_updated: float | None = None
    """When the sender last counted the outbox (after a drain, and at every retry)."""
    outbox_waiting_since: float | None = None
    """When the sender first found samples it could not deliver, since the outbox was
    last empty; None while it drains."""
    outbox_waiting_samples: int = 0
    """The samples waiting at ``outbox_waiting_since``: fewer than now means it grows."""
    receiver: ReceiverAnswer | None = None
    receiver_url: str = ""
    tempo: TempoContact | None = None
    tempo_url: str = ""
    clock: Clock | None = None
    last_reload: Reload | None = None
    sender_alive: bool = True


class StatusBoard:
    """The bridge's status, recorded as things happen (one event loop: no locking)."""

    def __init__(self, status: Status) -> None:
        self._status = status
        self._rules: dict[tuple[str, str], RuleStatus] = {}

    def snapshot(self) -> Status:
        """A deep copy, safe to render while the bridge goes on."""
        return copy.deepcopy(self._status)

    def set_groups(self, groups: list[GroupStatus]) -> None:
        """The groups now loaded; rules kept from before (same group, record, kind and
        expression) keep what they recorded, and take their new labels."""
        for group in groups:
            for rule in group.rules:
                known = self._rules.get((group.name, rule.record))
                if known is not None and (known.kind, known.expr) == (rule.kind, rule.expr):
                    rule.checkpoint, rule.windows_behind = known.checkpoint, known.windows_behind
                    rule.settle, rule.last = known.settle, known.last
                    rule.last_error = known.last_error
        self._status.groups = groups
        self._rules = {(g.name, r.record): r for g in groups for r in g.rules}

    def rule(self, group: str, record: str) -> RuleStatus | None:
        """The status of a loaded rule, to update in place; None when it is not loaded."""
        return self._rules.get((group, record))

    def evaluated(self, group: str, record: str, evaluation: Evaluation) -> None:
        rule = self._rules.get((group, record))
        if rule is None:
            return
        rule.last = evaluation
        if evaluation.error is not None:
            rule.last_error = evaluation

    def outbox(self, samples: int, oldest_age: float, at: float) -> None:
        """The outbox as counted at ``at``. The sender counts it after a drain (so it is
        empty unless a 4xx left nothing to retry) and at every retry (so a non-empty
        count means samples wait for the receiver)."""
        status = self._status
        status.outbox_samples = samples
        status.outbox_oldest_age = oldest_age
        status.outbox_updated = at
        if samples == 0:
            status.outbox_waiting_since = None
            status.outbox_waiting_samples = 0
        elif status.outbox_waiting_since is None:
            status.outbox_waiting_since = at
            status.outbox_waiting_samples = samples

    def receiver_answered(self, answer: ReceiverAnswer) -> None:
        self._status.receiver = answer

    def tempo_answered(self, contact: TempoContact) -> None:
        self._status.tempo = contact

    def clock(self, clock: Clock) -> None:
        self._status.clock = clock

    def reloaded(self, reload: Reload) -> None:
        self._status.last_reload = reload

    def sender(self, alive: bool) -> None:
        self._status.sender_alive = alive

