"""Doctor: reaches Tempo and the receiver, reads their settings, and says what would lose data.

``tempo-bridge doctor --config FILE`` prints one line per finding, ``OK``, ``WARN`` or
``FAIL``, each WARN and FAIL saying what to change:

* Tempo answers (``/api/status/buildinfo``) and runs a TraceQL metrics query per tenant;
* Tempo's ``/status/config``: the ingestion time range slack against the longest expected
  request (spans that reach Tempo later than the slack after they started are dropped by
  Tempo), ``query_end_cutoff`` against the bridge's mirror of it and each group's
  ``query_offset``, ``max_duration`` against the bridge's and each group's interval,
  ``max_intervals`` against the bridge's, ``max_response_series`` against each rule's
  ``limit``, ``max_exemplars`` against the series of each group with exemplars on (how many
  series one window's exemplars can cover);
* Tempo's per-tenant overrides (``/status/overrides/{tenant}``) of each tenant the rules
  use: its ``max_metrics_duration`` against the bridge's ``max_duration``;
* Tempo's clock (the ``Date`` header of its answers) against the host's: a skew eats into
  each group's margin ``query_offset - query_end_cutoff - ingest_delay``;
* the receiver accepts an empty remote-write request (Prometheus answers 404 when it was
  started without ``--web.enable-remote-write-receiver``); when it is a Prometheus that
  shows its config, ``max_sample_age`` against the age of samples it accepts.
* the state database, when no bridge has it open: that it can be read (every rule's
  totals, series and kept values), and the samples waiting in its outbox against
  ``max_sample_age``. It is read without writing anything; a running bridge's state is
  not read (its ``/api/v1/status`` tells what it holds).

The checks of settings are pure functions of what was read; only :func:`diagnose` does that
I/O, and :func:`check_state` reads the state database itself. Secrets
(tokens, passwords, header values, URL query strings) never appear in the report.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import httpx
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from bridge import USER_AGENT
from bridge.components import STATE_FILE, receiver_client, tempo_client
from bridge.config import Config
from bridge.durations import DurationError, format_duration, parse_duration
from bridge.errors import ReceiverError, StateError, TempoError
from bridge.redact import display_url
from bridge.remote_write import encode_write_request
from bridge.rules import Group, Rule
from bridge.state import VERSION, State, holder, schema_version
from bridge.tempo import ClockSkew, TempoClient
from bridge.yamlfile import lookup

Level = Literal["OK", "WARN", "FAIL"]

#: The longest time from a request's start until its span reaches Tempo, by default. LLM
#: requests with long reasoning or big outputs run for minutes; Tempo's own default slack
#: (2m) is shorter on purpose, so that doctor says so.
DEFAULT_LONGEST_REQUEST = 600.0

#: Prometheus (2.x TSDB) refuses samples about 1h older than its newest one; 55m is safe.
PROMETHEUS_MAX_AGE = 55 * 60.0

SLACK_KEYS: tuple[tuple[str, ...], ...] = (
    ("live_store", "wal", "ingestion_time_range_slack"),  # Tempo 3
    ("storage", "trace", "wal", "ingestion_time_range_slack"),  # Tempo 2 ingesters
)
CUTOFF_KEY = ("query_frontend", "query_end_cutoff")
MAX_DURATION_KEY = ("query_frontend", "metrics", "max_duration")
MAX_INTERVALS_KEY = ("query_frontend", "metrics", "max_intervals")
MAX_RESPONSE_SERIES_KEY = ("query_frontend", "metrics", "max_response_series")
MAX_EXEMPLARS_KEY = ("query_frontend", "metrics", "max_exemplars")
#: Tempo's default max_exemplars, and the most exemplars Tempo 3.0.3 keeps for one query
#: whatever max_exemplars says (traceql's maxExemplars).
TEMPO_MAX_EXEMPLARS = 100
#: Where a tenant's overrides (Tempo's runtime config, as ``yaml.Marshal`` writes them) set
#: its own limit on a metrics query's range; 0 or absent: max_duration applies.
TENANT_MAX_DURATION_KEY = ("read", "max_metrics_duration")
OVERRIDES_PATH = "/status/overrides/{tenant}"
#: The tenant of a Tempo without multitenancy, which ignores X-Scope-OrgID.
SINGLE_TENANT = "single-tenant"
BUILDINFO_PATH = "/api/status/buildinfo"
STATUS_CONFIG_PATH = "/status/config"
PROMETHEUS_WRITE_PATH = "/api/v1/write"
PROBE_QUERY = "{ } | count_over_time()"


@dataclass(frozen=True)
class Finding:
    """One line of the report."""

    level: Level
    message: str

    def __str__(self) -> str:
        return f"{self.level:<4} {self.message}"


def ok(message: str) -> Finding:
    return Finding("OK", message)


def warn(message: str) -> Finding:
    return Finding("WARN", message)


def fail(message: str) -> Finding:
    return Finding("FAIL", message)


def problems(findings: Iterable[Finding]) -> int:
    """How many findings are WARN or FAIL."""
    return sum(f.level != "OK" for f in findings)


def format_report(findings: Sequence[Finding]) -> str:
    """The findings, one per line, then a summary line."""
    count = problems(findings)
    summary = (
        "no problems found" if count == 0
        else f"{count} problem{'s' if count > 1 else ''} found"
    )
    return "".join(f"{f}\n" for f in findings) + summary + "\n"


# -- reading Tempo's and Prometheus's settings --------------------------------------------------

_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0,
             "m": 60.0, "h": 3600.0}
_GO_PART = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Seconds in a Go ``time.Duration`` string, as Tempo prints them ("2h0m0s", "1.5s")."""
    text = text.strip()
    if text == "0":
        return 0.0
    parts = _GO_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{text!r} is not a Go duration")
    return sum(float(number) * _GO_UNITS[unit] for number, unit in parts)


def _load_yaml(text: str) -> Any:
    return YAML(typ="safe", pure=True).load(text)


@dataclass(frozen=True)
class TempoSettings:
    """The settings of Tempo's ``/status/config`` that decide what the bridge sees.

    A setting is None when Tempo does not show it; ``slack_key`` says where the slack was.
    """

    slack: float | None
    slack_key: str
    query_end_cutoff: float | None
    max_duration: float | None
    max_intervals: int | None = None
    max_response_series: int | None = None  # Tempo leaves it out when it is 0 (no limit)
    max_exemplars: int | None = None


def read_tempo_settings(text: str) -> TempoSettings:
    """Parse ``/status/config``; raises ValueError when it holds no YAML mapping.

    Tempo 3.0.3 answers ``GET /status/config``, a ``---`` line, then the YAML: the first
    line reads as a document of its own, so the first mapping among the documents is it.
    """
    try:
        documents = list(YAML(typ="safe", pure=True).load_all(text))
    except YAMLError as exc:
        raise ValueError(f"not YAML ({exc.__class__.__name__})") from exc
    document = next((d for d in documents if isinstance(d, Mapping)), None)
    if document is None:
        raise ValueError("not a YAML mapping")

    def duration(path: Sequence[str]) -> float | None:
        value = lookup(document, path)[1]
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            return value / 1e9  # a bare integer is nanoseconds
        return parse_go_duration(str(value))

    slack_key = ".".join(SLACK_KEYS[0])
    slack = None
    for path in SLACK_KEYS:
        slack = duration(path)
        if slack is not None:
            slack_key = ".".join(path)
            break
    def whole_number(path: Sequence[str]) -> int | None:
        value = lookup(document, path)[1]
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    return TempoSettings(
        slack=slack,
        slack_key=slack_key,
        query_end_cutoff=duration(CUTOFF_KEY),
        max_duration=duration(MAX_DURATION_KEY),
        max_intervals=whole_number(MAX_INTERVALS_KEY),
        max_response_series=whole_number(MAX_RESPONSE_SERIES_KEY),
        max_exemplars=whole_number(MAX_EXEMPLARS_KEY),
    )


@dataclass(frozen=True)
class PrometheusInfo:
    """A Prometheus receiver: its version and out-of-order window (0 when it has none)."""

    version: str
    out_of_order_window: float


def read_prometheus_config(text: str) -> float | None:
    """The out-of-order window of ``/api/v1/status/config``'s YAML; None if not Prometheus's."""
    try:
        document = _load_yaml(text)
    except YAMLError:
        return None
    if not isinstance(document, Mapping) or "global" not in document:
        return None
    tsdb = lookup(document, ("storage", "tsdb"))[1]
    if not isinstance(tsdb, Mapping):
        return 0.0
    window = tsdb.get("out_of_order_time_window")
    if isinstance(window, str):
        try:
            return parse_duration(window)
        except DurationError:
            pass
    milliseconds = tsdb.get("outofordertimewindow")  # 2.42 prints both forms
    if isinstance(milliseconds, int) and not isinstance(milliseconds, bool):
        return milliseconds / 1000
    return 0.0


# -- the checks ---------------------------------------------------------------------------------


def _d(seconds: float) -> str:
    """A duration both Tempo (Go) and the bridge (Prometheus) read: h, m, s, ms, no days."""
    return format_duration(seconds, largest="h")


def _group(group: Group) -> str:
    return f"group {group.name} ({group.file}:{group.line})"


def check_tempo_settings(
    settings: TempoSettings,
    config: Config,
    groups: Sequence[Group],
    longest_request: float,
) -> list[Finding]:
    """What Tempo's settings mean for the bridge's config and rules."""
    findings = []
    slack, key = settings.slack, settings.slack_key
    if slack is None:
        findings.append(warn(
            f"Tempo's /status/config shows no {key}: cannot tell whether Tempo keeps the spans "
            f"of requests up to {_d(longest_request)} long"
        ))
    elif slack < longest_request:
        findings.append(warn(
            f"Tempo's {key} is {_d(slack)}, shorter than the longest expected request "
            f"({_d(longest_request)}): Tempo drops spans that arrive more than {_d(slack)} "
            f"after they started; raise it in Tempo's config to at least {_d(longest_request)} "
            f"(or give doctor --longest-request if requests are shorter)"
        ))
    else:
        findings.append(ok(
            f"Tempo's {key} is {_d(slack)}, enough for requests up to {_d(longest_request)} long"
        ))

    findings += _check_cutoff(settings.query_end_cutoff, config, groups)
    findings += _check_max_duration(settings.max_duration, config, groups)
    findings += _check_max_intervals(settings.max_intervals, config)
    findings += _check_response_series(settings.max_response_series, groups)
    findings += _check_exemplars(settings.max_exemplars, groups)
    return findings


def _check_cutoff(cutoff: float | None, config: Config, groups: Sequence[Group]) -> list[Finding]:
    key = ".".join(CUTOFF_KEY)
    mirrored = config.tempo.query_end_cutoff
    if cutoff is None:
        return [warn(
            f"Tempo's /status/config shows no {key}: cannot check tempo.query_end_cutoff "
            f"({_d(mirrored)}) and the groups' query_offset against it"
        )]
    findings = []
    if cutoff != mirrored:
        findings.append(warn(
            f"Tempo's {key} is {_d(cutoff)} but the bridge's tempo.query_end_cutoff is "
            f"{_d(mirrored)}; set tempo.query_end_cutoff: {_d(cutoff)} in the bridge's config"
        ))
    else:
        findings.append(ok(f"Tempo's {key} is {_d(cutoff)}, as in tempo.query_end_cutoff"))
    delay = config.tempo.ingest_delay
    late = [g for g in groups if g.query_offset - delay < cutoff]
    for group in late:
        findings.append(warn(
            f"{_group(group)}: query_offset {_d(group.query_offset)} minus ingest_delay "
            f"{_d(delay)} is less than Tempo's {key} {_d(cutoff)}, so Tempo leaves out the end "
            f"of its windows; raise query_offset to at least {_d(cutoff + delay)}"
        ))
    if groups and not late:
        findings.append(ok(
            f"every group's query_offset is at least Tempo's {key} plus ingest_delay "
            f"({_d(cutoff + delay)})"
        ))
    return findings


def _check_max_duration(
    max_duration: float | None, config: Config, groups: Sequence[Group]
) -> list[Finding]:
    key = ".".join(MAX_DURATION_KEY)
    bridge = config.tempo.max_duration
    if max_duration is None:
        return [warn(
            f"Tempo's /status/config shows no {key}: cannot check tempo.max_duration "
            f"({_d(bridge)}) against it"
        )]
    if max_duration == 0:
        return [ok(f"Tempo's {key} is 0 (no limit); the bridge keeps to {_d(bridge)}")]
    findings = []
    if max_duration < bridge:
        findings.append(warn(
            f"Tempo's {key} is {_d(max_duration)}, shorter than the bridge's tempo.max_duration "
            f"{_d(bridge)}: Tempo refuses the longer catch-up queries; set tempo.max_duration: "
            f"{_d(max_duration)} in the bridge's config"
        ))
    elif max_duration > bridge:
        findings.append(warn(
            f"Tempo's {key} is {_d(max_duration)} but the bridge's tempo.max_duration is "
            f"{_d(bridge)}: catch-up takes more queries than needed; set tempo.max_duration: "
            f"{_d(max_duration)} in the bridge's config"
        ))
    else:
        findings.append(ok(f"Tempo's {key} is {_d(max_duration)}, as in tempo.max_duration"))
    for group in groups:
        # A range query covers its windows plus one leading bucket: two intervals at least.
        if max_duration < 2 * group.interval:
            findings.append(fail(
                f"{_group(group)}: Tempo's {key} {_d(max_duration)} is less than two intervals "
                f"({_d(2 * group.interval)}), so missed windows can never be caught up; raise "
                f"{key} in Tempo's config to at least {_d(2 * group.interval)}"
            ))
    return findings


def _check_max_intervals(max_intervals: int | None, config: Config) -> list[Finding]:
    """Tempo refuses a range query of more steps than its max_intervals ("step ... is too
    small"): the bridge must not plan longer ones."""
    key = ".".join(MAX_INTERVALS_KEY)
    bridge = config.tempo.max_intervals
    if max_intervals is None:
        return [ok(f"Tempo's /status/config shows no {key}: Tempo sets no limit on the steps "
                   f"of a range query; the bridge keeps to {bridge}")]
    if max_intervals == 0:
        return [ok(f"Tempo's {key} is 0 (no limit); the bridge keeps to {bridge}")]
    if max_intervals < bridge:
        return [warn(
            f"Tempo's {key} is {max_intervals}, less than the bridge's tempo.max_intervals "
            f"{bridge}: Tempo refuses the catch-up queries of more steps; set "
            f"tempo.max_intervals: {max_intervals} in the bridge's config"
        )]
    if max_intervals == bridge:
        return [ok(f"Tempo's {key} is {max_intervals}, as in tempo.max_intervals")]
    return [ok(f"Tempo's {key} is {max_intervals}, more than tempo.max_intervals ({bridge})")]


def _check_response_series(max_series: int | None, groups: Sequence[Group]) -> list[Finding]:
    """Tempo cuts an answer with more series than its max_response_series and marks it
    partial, which the bridge never records: every evaluation of a rule that has more
    series fails. A rule's own ``limit`` (0 = none) must not be above it."""
    key = ".".join(MAX_RESPONSE_SERIES_KEY)
    if not max_series:
        return [ok(f"Tempo's {key} is not set (no limit): Tempo answers every series")]
    findings = []
    for group in groups:
        over = [r for r in group.rules if r.limit == 0 or r.limit > max_series]
        if not over:
            continue
        rules = ", ".join(
            f"{r.record} ({'no limit' if r.limit == 0 else f'limit {r.limit}'})" for r in over)
        findings.append(warn(
            f"{_group(group)}: Tempo's {key} is {max_series}, below the series these rules "
            f"allow: {rules}; an answer with more series comes back partial, which the bridge "
            f"never records, so the rule fails every evaluation; set limit: {max_series} or "
            f"less on them, or raise {key} in Tempo's config"
        ))
    if not findings:
        findings.append(ok(f"Tempo's {key} is {max_series}, at least every rule's limit"))
    return findings


def exemplars_per_window(max_exemplars: int) -> int:
    """The most exemplars Tempo 3.0.3 gives for the window a steady-state query reads.

    That query, ``start=e-i, end=e, step=i``, is evaluated over ``(e-2i, e]`` (the extra
    leading bucket). Tempo keeps at most ``max_exemplars`` for the answer (and never more
    than 100), at most two in each of ``max_exemplars // 2`` equal slices of that range:
    half of the slices, so about half of the exemplars, fall in the window.
    """
    kept = min(max_exemplars, TEMPO_MAX_EXEMPLARS)
    slices = max(kept // 2, 1)
    return min(kept, 2 * math.ceil(slices / 2))


def _check_exemplars(max_exemplars: int | None, groups: Sequence[Group]) -> list[Finding]:
    """One line per group with exemplars on: how many of a rule's series one window's
    exemplars can cover, WARN when a rule's ``limit`` allows more. A rule without ``by()``
    has one series; one with ``by()`` and no ``limit`` has a number doctor cannot know."""
    key = ".".join(MAX_EXEMPLARS_KEY)
    if max_exemplars is None:
        setting = f"{key} not shown, Tempo's default {TEMPO_MAX_EXEMPLARS}"
        max_exemplars = TEMPO_MAX_EXEMPLARS
    elif max_exemplars > TEMPO_MAX_EXEMPLARS:
        setting = f"{key} {max_exemplars}, of which Tempo keeps {TEMPO_MAX_EXEMPLARS} per query"
    else:
        setting = f"{key} {max_exemplars}"
    window = exemplars_per_window(max_exemplars)
    findings = []
    for group in groups:
        if not group.exemplars:
            continue
        per_series = group.exemplars_per_series
        covered = window // per_series
        gives = (f"{_group(group)}: Tempo gives at most {window} exemplars for the window a "
                 f"steady-state query reads ({setting})")
        bounds = {r.record: _series_bound(r) for r in group.rules}
        over = [r for r in group.rules if (bounds[r.record] or 0) > covered]
        if over:
            rules = ", ".join(f"{r.record} (limit {r.limit})" if r.by else r.record
                              for r in over)
            findings.append(warn(
                f"{gives}, so with exemplars_per_series {per_series} at most {covered} series of "
                f"a rule get all their exemplars in a window: {rules} can have more, and the "
                f"rest get fewer or none; raise {key} in Tempo's config (up to "
                f"{TEMPO_MAX_EXEMPLARS}: Tempo keeps no more per query), lower "
                f"exemplars_per_series, or set exemplars: false"
            ))
            continue
        unknown = [record for record, bound in bounds.items() if bound is None]
        most = max((bound for bound in bounds.values() if bound is not None), default=0)
        enough = (f"{gives}, enough for exemplars_per_series {per_series} on each of "
                  f"{covered} series of a rule")
        if unknown:
            findings.append(ok(
                f"{enough}; {', '.join(unknown)} set no limit, so doctor cannot tell whether "
                f"they have more series in a window (those beyond get none)"
            ))
        else:
            findings.append(ok(f"{enough}; its rules have at most {most} series"))
    return findings


def _series_bound(rule: Rule) -> int | None:
    """The most series a rule has in a window, as far as the rule says: one without
    ``by()``, its ``limit`` with one, None when it sets none."""
    if not rule.by:
        return 1
    return rule.limit or None


def read_tenant_max_duration(payload: Any) -> float:
    """A tenant's own limit on a metrics query's range, 0 when it has none, from Tempo's
    ``/status/overrides/{tenant}`` JSON (``runtime_overrides`` holds the YAML of the
    tenant's overrides); raises ValueError for anything else."""
    text = lookup(payload, ("runtime_overrides",))[1]
    if not isinstance(text, str):
        raise ValueError("the answer has no runtime_overrides")
    try:
        overrides = _load_yaml(text)
    except YAMLError as exc:
        raise ValueError(f"runtime_overrides is not YAML ({exc.__class__.__name__})") from exc
    value = lookup(overrides, TENANT_MAX_DURATION_KEY)[1]
    if value is None:
        return 0.0
    text = str(value)
    try:  # a Prometheus model.Duration ("12h", "1d"), or a Go duration ("12h0m0s")
        return parse_duration(text)
    except DurationError:
        return parse_go_duration(text)


def check_tenant_max_duration(
    tenant: str, max_duration: float, config: Config, groups: Sequence[Group]
) -> list[Finding]:
    """What a tenant's own max_metrics_duration (0: none) means for the groups reading it."""
    key = ".".join(TENANT_MAX_DURATION_KEY)
    bridge = config.tempo.max_duration
    if max_duration == 0:
        return [ok(f"Tempo sets no {key} for tenant {tenant}: "
                   f"query_frontend.metrics.max_duration applies")]
    findings = []
    if max_duration < bridge:
        findings.append(warn(
            f"Tempo's per-tenant override {key} of tenant {tenant} is {_d(max_duration)}, "
            f"shorter than the bridge's tempo.max_duration {_d(bridge)}: Tempo refuses the "
            f"longer catch-up queries of this tenant's groups; set tempo.max_duration: "
            f"{_d(max_duration)} in the bridge's config, or raise the override in Tempo's"
        ))
    else:
        findings.append(ok(
            f"Tempo's per-tenant override {key} of tenant {tenant} is {_d(max_duration)}, "
            f"at least tempo.max_duration ({_d(bridge)})"
        ))
    for group in groups:
        if max_duration < 2 * group.interval:
            findings.append(fail(
                f"{_group(group)}: Tempo's {key} of tenant {tenant} {_d(max_duration)} is less "
                f"than two intervals ({_d(2 * group.interval)}), so missed windows can never "
                f"be caught up; raise it in Tempo's overrides to at least "
                f"{_d(2 * group.interval)}"
            ))
    return findings
def check_clock_skew(
    skew: ClockSkew | None, config: Config, groups: Sequence[Group]
) -> list[Finding]:
    """Whether Tempo's clock differs from the host's by more than its ``Date`` header can
    hide: WARN when the difference eats into the smallest margin ``query_offset -
    query_end_cutoff - ingest_delay`` of the groups, FAIL when it surely exceeds it."""
    if skew is None:
        return [warn("Tempo's answers have no Date header: its clock is not compared with "
                     "this host's")]
    if skew.certain == 0:
        return [ok("Tempo's clock agrees with this host's (to the Date header's second)")]
    way = "ahead of" if skew.low > 0 else "behind"
    low, high = sorted((abs(skew.low), abs(skew.high)))
    apart = f"Tempo's clock is {low:.1f}s to {high:.1f}s {way} this host's"
    cutoff, delay = config.tempo.query_end_cutoff, config.tempo.ingest_delay
    if not groups:
        return [warn(f"{apart}; synchronise both with NTP")]
    group = min(groups, key=lambda g: g.query_offset)
    margin = group.query_offset - cutoff - delay
    what = (f"the smallest margin query_offset - query_end_cutoff - ingest_delay "
            f"({_d(margin)}, {_group(group)})")
    if skew.certain > margin:
        return [fail(
            f"{apart}, more than {what}: its windows are read before Tempo has all their "
            f"spans; synchronise both clocks with NTP, or raise query_offset to at least "
            f"{_d(math.ceil(cutoff + delay + high))}"
        )]
    return [warn(f"{apart}, at least {skew.certain:.1f}s of {what}; synchronise both clocks "
                 f"with NTP")]


def check_sample_age(max_sample_age: float, prometheus: PrometheusInfo | None) -> list[Finding]:
    """Whether the receiver keeps the oldest samples the bridge may send."""
    age = "0 (no limit)" if max_sample_age == 0 else _d(max_sample_age)
    if prometheus is None:
        return [ok(
            f"the receiver is not a Prometheus that shows its config; remote_write.max_sample_age "
            f"{age} not checked against it"
        )]
    window = prometheus.out_of_order_window
    name = f"Prometheus {prometheus.version}"
    if max_sample_age == 0 and window == 0:
        return [warn(
            f"remote_write.max_sample_age is 0 (no limit) but {name} has no out-of-order window: "
            f"after an outage it refuses samples older than about 1h, and the whole request "
            f"with them; set remote_write.max_sample_age: 50m, or give Prometheus "
            f"storage.tsdb.out_of_order_time_window"
        )]
    limit = max(PROMETHEUS_MAX_AGE, window)
    if max_sample_age > limit:
        how_old = f"more than {_d(window)}" if window > PROMETHEUS_MAX_AGE else "about 1h"
        return [warn(
            f"remote_write.max_sample_age is {age} but {name} refuses samples {how_old} old, "
            f"and the whole request with them; set remote_write.max_sample_age: "
            f"{_d(limit if window > PROMETHEUS_MAX_AGE else 50 * 60)} or less"
        )]
    window_text = f"out-of-order window {_d(window)}" if window else "no out-of-order window"
    return [ok(f"remote_write.max_sample_age {age} suits {name} ({window_text})")]


# -- talking to Tempo and the receiver ------------------------------------------------------------


class _Redactor:
    """Replaces secrets and URL query strings in text that goes into the report."""

    def __init__(self, config: Config) -> None:
        secrets: set[str] = set()
        for endpoint in (config.tempo, config.remote_write):
            for value in endpoint.auth_headers().values():
                secrets.add(value)
                scheme, _, credential = value.partition(" ")
                if credential and scheme.lower() in ("bearer", "basic"):
                    secrets.add(credential)
                if credential and scheme.lower() == "basic":
                    try:
                        pair = base64.b64decode(credential).decode()
                        secrets.add(pair.partition(":")[2])
                    except (binascii.Error, UnicodeDecodeError):
                        pass
            query = httpx.URL(endpoint.url).query.decode()
            if query:
                secrets.add(query)
        self._secrets = sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "<redacted>")
        return text


async def _check_tempo(
    config: Config, groups: Sequence[Group], longest_request: float, redact: _Redactor,
    transport: httpx.AsyncBaseTransport | None,
) -> list[Finding]:
    url = display_url(config.tempo.url)
    tempo = tempo_client(config, transport)
    findings = []
    try:
        try:
            info = await tempo.get_json(BUILDINFO_PATH)
        except TempoError as exc:
            if exc.status is None and exc.reason != "malformed":
                return [fail(f"cannot reach Tempo at {url}: {redact(str(exc))}; check tempo.url")]
            findings.append(warn(f"Tempo at {url}: {redact(str(exc))}"))
        else:
            version = info.get("version", "?") if isinstance(info, dict) else "?"
            revision = info.get("revision", "?") if isinstance(info, dict) else "?"
            findings.append(ok(f"Tempo {version} (revision {revision}) answers at {url}"))

        findings += await _probe_queries(tempo, config, groups, redact)

        try:
            settings = read_tempo_settings(await tempo.get_text(STATUS_CONFIG_PATH))
        except (TempoError, ValueError) as exc:
            findings.append(warn(
                f"cannot read Tempo's {STATUS_CONFIG_PATH} ({redact(str(exc))}): its slack, "
                f"query_end_cutoff and max_duration are not checked"
            ))
        else:
            findings += check_tempo_settings(settings, config, groups, longest_request)

        findings += await _check_tenant_overrides(tempo, config, groups, redact)
        findings += check_clock_skew(tempo.clock_skew, config, groups)
    finally:
        await tempo.aclose()
    return findings


def _tenants(config: Config, groups: Sequence[Group]) -> dict[str, list[Group]]:
    """The groups of each tenant the rules read ("a|b" reads both a and b)."""
    tenants: dict[str, list[Group]] = {}
    for group in groups:
        for tenant in (group.tenant or config.tempo.tenant or SINGLE_TENANT).split("|"):
            tenants.setdefault(tenant, []).append(group)
    return dict(sorted(tenants.items()))


async def _check_tenant_overrides(
    tempo: TempoClient, config: Config, groups: Sequence[Group], redact: _Redactor
) -> list[Finding]:
    """Each tenant's own max_metrics_duration, read from Tempo's overrides page."""
    findings = []
    for tenant, its_groups in _tenants(config, groups).items():
        path = OVERRIDES_PATH.format(tenant=quote(tenant, safe=""))
        try:
            max_duration = read_tenant_max_duration(await tempo.get_json(path))
        except (TempoError, ValueError) as exc:
            findings.append(warn(
                f"cannot read Tempo's overrides of tenant {tenant} ({redact(str(exc))}): its "
                f"{'.'.join(TENANT_MAX_DURATION_KEY)} is not checked"
            ))
        else:
            findings += check_tenant_max_duration(tenant, max_duration, config, its_groups)
    return findings


async def _probe_queries(
    tempo: TempoClient, config: Config, groups: Sequence[Group], redact: _Redactor
) -> list[Finding]:
    """One small TraceQL metrics query per tenant the groups use."""
    tenants = sorted({g.tenant or config.tempo.tenant or "" for g in groups} or {""})
    end = int(time.time() - config.tempo.query_end_cutoff) - 60
    findings = []
    for tenant in tenants:
        who = f" for tenant {tenant}" if tenant else ""
        try:
            await tempo.instant(PROBE_QUERY, end - 60, end, tenant=tenant or None)
        except TempoError as exc:
            hint = (
                "check tempo.bearer_token_file, basic_auth or headers"
                if exc.status in (401, 403) else "check tempo.url and tempo.tenant"
            )
            findings.append(fail(
                f"Tempo refused a TraceQL metrics query{who}: {redact(str(exc))}; {hint}"
            ))
        else:
            findings.append(ok(f"Tempo answers TraceQL metrics queries{who}"))
    return findings


def _receiver_off(exc: ReceiverError) -> bool:
    return exc.status in (404, 405) or "remote write receiver needs to be enabled" in str(exc)


async def _check_receiver(
    config: Config, redact: _Redactor, transport: httpx.AsyncBaseTransport | None
) -> list[Finding]:
    section = config.remote_write
    url = display_url(section.url)
    client = receiver_client(config, transport)
    try:
        await client.send(encode_write_request([]))
    except ReceiverError as exc:
        detail = redact(str(exc))
        if exc.status is None:
            return [fail(f"cannot reach the receiver: {detail}; check remote_write.url")]
        if _receiver_off(exc):
            return [fail(
                f"the receiver at {url} does not take remote write (HTTP {exc.status}): start "
                f"Prometheus with --web.enable-remote-write-receiver, or fix remote_write.url"
            )]
        if exc.status in (401, 403):
            return [fail(
                f"the receiver at {url} refused the credentials (HTTP {exc.status}): check "
                f"remote_write.bearer_token_file, basic_auth or headers"
            )]
        return [fail(f"the receiver refused an empty write request: {detail}")]
    finally:
        await client.aclose()
    findings = [ok(f"the receiver at {url} accepts remote write")]
    prometheus = await _prometheus_info(config, transport)
    findings += check_sample_age(section.max_sample_age, prometheus)
    return findings


async def _prometheus_info(
    config: Config, transport: httpx.AsyncBaseTransport | None
) -> PrometheusInfo | None:
    """The receiver's version and out-of-order window, if it is a Prometheus showing them."""
    section = config.remote_write
    write_url = httpx.URL(section.url)
    if not write_url.path.endswith(PROMETHEUS_WRITE_PATH):
        return None
    base = write_url.copy_with(
        path=write_url.path[: -len(PROMETHEUS_WRITE_PATH)], query=None, fragment=None
    )
    async with httpx.AsyncClient(
        headers={**section.auth_headers(), "User-Agent": USER_AGENT},
        timeout=section.timeout, transport=transport,
    ) as http:
        try:
            answer = await http.get(f"{base}/api/v1/status/config")
            payload = answer.json() if answer.status_code == 200 else None
            text = lookup(payload, ("data", "yaml"))[1]
            window = read_prometheus_config(text) if isinstance(text, str) else None
            if window is None:
                return None
            build = (await http.get(f"{base}/api/v1/status/buildinfo")).json()
        except (httpx.HTTPError, ValueError):
            return None
    version = lookup(build, ("data", "version"))[1]
    return PrometheusInfo(str(version) if version else "?", window)


async def diagnose(
    config: Config,
    groups: Sequence[Group],
    *,
    longest_request: float = DEFAULT_LONGEST_REQUEST,
    transport: httpx.AsyncBaseTransport | None = None,
) -> list[Finding]:
    """Every finding about Tempo, then about the receiver."""
    redact = _Redactor(config)
    findings = await _check_tempo(config, groups, longest_request, redact, transport)
    findings += await _check_receiver(config, redact, transport)
    findings += check_state(config.state_dir / STATE_FILE, config.remote_write.max_sample_age)
    return findings


def _in_use(path: Path) -> Finding | None:
    """Why the state at ``path`` is not read: a bridge has it open, or left its log."""
    pid = holder(path)
    if pid is not None:
        return ok(f"the state {path} is open by tempo-bridge pid {pid}: not read here "
                  "(the bridge's /api/v1/status tells what it holds)")
    if path.with_name(path.name + "-wal").exists():
        return ok(f"the state {path} has a write-ahead log: a tempo-bridge has it open, "
                  "or stopped without closing it (the daemon replays the log when it "
                  "starts); not read here")
    return None


def check_state(path: Path, max_sample_age: float, now: float | None = None) -> list[Finding]:
    """The state database at ``path``: there yet or not, open by a bridge or not, and if
    not, readable, with what waits in its outbox."""
    try:
        if not path.exists():
            return [ok(f"no state at {path} yet: each rule begins at its group's start")]
        if (in_use := _in_use(path)) is not None:
            return [in_use]
        version = schema_version(path)
        if version < VERSION:
            return [ok(f"the state {path} has schema version {version} (tempo-bridge 0.1): "
                       "the daemon upgrades it when it starts")]
        if version > VERSION:
            return [fail(f"the state {path} has schema version {version}, newer than this "
                         f"tempo-bridge's ({VERSION}): run the tempo-bridge that wrote it")]
        state = State(path, read_only=True)
        try:
            rules = state.known_rules()
            for rule in rules:
                stored = state.load(rule.key)
                if stored is not None:
                    state.kept_values(rule.key, stored.kept_windows)
            waiting, oldest = state.outbox_samples(), state.outbox_oldest_ts_ms()
        finally:
            state.close()
    except StateError as exc:
        # a bridge that opened the state while it was read may have changed what was read
        return [_in_use(path) or fail(f"{exc}; restore the whole file from a backup")]
    except OSError as exc:
        return [fail(f"cannot read the state at {path}: {exc.strerror or exc}; run doctor "
                     "as the user the bridge runs as, or as root")]
    removed = sum(r.removed_at is not None for r in rules)
    held = (f"{len(rules)} rule{'' if len(rules) == 1 else 's'}"
            + (f" ({removed} removed from the rule files, kept for the retention)"
               if removed else ""))
    if not waiting or oldest is None:
        return [ok(f"the state {path} is readable: {held}, no sample waiting to be sent")]
    age = max(0.0, (time.time() if now is None else now) - oldest / 1000)
    line = (f"the state {path} is readable: {held}, {waiting:,} sample"
            f"{'' if waiting == 1 else 's'} waiting to be sent, the oldest {_d(int(age))} old")
    if max_sample_age and age > max_sample_age:
        return [warn(f"{line}: the daemon drops those older than remote_write.max_sample_age "
                     f"({_d(max_sample_age)}) when it sends them (counters stay exact, gauges "
                     "lose those windows); start it soon")]
    return [ok(f"{line}: the daemon sends them when it starts")]
