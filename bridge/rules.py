"""Recording rules: the rule file format, its validation, and the mapping of Tempo labels."""

from __future__ import annotations

import functools
import glob
import hashlib
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from ruamel.yaml.comments import CommentedMap, CommentedSeq

from bridge.durations import DurationError, format_duration, parse_duration
from bridge.errors import ConfigError, Issue
from bridge.names import label_name_problem, metric_name_problem, tenant_problem
from bridge.traceql import ExprError, ParsedExpr, parse_expr
from bridge.yamlfile import (
    Position,
    YamlFile,
    describe,
    item_position,
    key_position,
    load_yaml,
    node_position,
    unknown_key,
    value_position,
)

DAY = 24 * 3600
DEFAULT_INTERVAL = 60
DEFAULT_SETTLE = (600, 3600)

SCOPES = ("span.", "resource.", "event.", "link.", "instrumentation.", ".")
# Attributes holding prompt and completion text: never labels (privacy and cardinality).
CONTENT_ATTRIBUTES = (
    "gen_ai.prompt", "gen_ai.completion",
    "gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions",
)

_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True)
class Rule:
    """One recording rule: a TraceQL metrics query whose result is recorded as ``record``."""

    record: str
    expr: str  # whitespace outside string literals collapsed to single spaces
    kind: Literal["counter", "gauge"]
    labels: Mapping[str, str] = field(hash=False)
    rename: Mapping[str, str] = field(hash=False)
    limit: int  # 0 = no limit
    missing_value: str | None  # None: a "nil" label from Tempo is left out
    by: tuple[str, ...]  # by() attributes as written
    file: str
    line: int

    def rule_id(self, group: str) -> str:
        """Stable identity of the rule's state: a new group name, record or expr starts anew."""
        key = "\x00".join((group, self.record, self.expr)).encode()
        return hashlib.sha256(key).hexdigest()[:16]

    def map_labels(
        self, tempo_labels: Mapping[str, str], group_labels: Mapping[str, str] = _EMPTY
    ) -> dict[str, str]:
        """The output labels of one Tempo series.

        Attribute names become label names (``label_name_for``, then ``rename``); Tempo's
        "nil" (or a by() attribute it left out) becomes ``missing_value`` or no label; an
        empty value drops it too (as in Prometheus); then the group's labels, then the
        rule's labels override; ``__name__`` is the record name.
        """
        out: dict[str, str] = {}
        if self.missing_value is not None:
            # Tempo leaves out a by() attribute a span lacks (and says "nil" only when it
            # lacks them all): every by() label gets missing_value where it is absent.
            tempo_labels = {**dict.fromkeys(self.by, "nil"), **tempo_labels}
        for key, value in tempo_labels.items():
            if key == "__name__":
                continue
            name = label_name_for(key)
            name = self.rename.get(name, name)
            if value == "nil":
                if self.missing_value is None:
                    continue
                value = self.missing_value
            if value:
                out[name] = value
        out.update(group_labels)
        out.update(self.labels)
        out["__name__"] = self.record
        return out


@dataclass(frozen=True)
class Group:
    """Rules evaluated together over the same windows; times in whole seconds."""

    name: str
    interval: int
    query_offset: int
    tenant: str | None  # X-Scope-OrgID; None: the one in the config
    start: int  # seconds back from now where a rule with no state begins; 0 = now
    settle: tuple[int, ...]  # window ages at which windows are read again
    labels: Mapping[str, str] = field(hash=False)
    rules: tuple[Rule, ...]
    file: str
    line: int


@functools.lru_cache(maxsize=4096)
def label_name_for(attribute: str) -> str:
    """Prometheus label name for a TraceQL attribute ("span.gen_ai.request.model" ->
    "gen_ai_request_model"): scope stripped, other characters replaced by "_"."""
    name = _strip_scope(attribute)
    name = re.sub(r"[^a-zA-Z0-9_]", "_", name)
    if name[:1].isdigit():
        name = "_" + name
    return name


def _strip_scope(attribute: str) -> str:
    for scope in SCOPES:
        if attribute.startswith(scope):
            return attribute[len(scope):]
    return attribute


def content_attribute(attribute: str) -> str | None:
    """The content attribute (gen_ai.prompt ...) that ``attribute`` names, or None."""
    name = _strip_scope(attribute).replace('"', "")
    for content in CONTENT_ATTRIBUTES:
        if name == content or name.startswith(content + "."):
            return content
    return None


# -- loading and validation -------------------------------------------------------------------

_FILE_KEYS = ("groups",)
_GROUP_KEYS = ("name", "interval", "query_offset", "tenant", "start", "settle", "labels", "rules")
_RULE_KEYS = ("record", "expr", "kind", "labels", "rename", "missing_value", "limit")


def load_rule_files(patterns: Sequence[str], *, min_query_offset: float) -> list[Group]:
    """The groups of every file matching ``patterns`` (absolute globs), in file order.

    Raises ConfigError with every issue in every file.
    """
    groups, issues = _load(expand_rule_files(patterns), min_query_offset)
    if issues:
        raise ConfigError(issues)
    return groups


def check_rule_files(paths: Sequence[Path], *, min_query_offset: float) -> list[Issue]:
    """Every issue in the rule files ``paths``, sorted; empty when they are all valid."""
    return sorted(_load(paths, min_query_offset)[1])


def expand_rule_files(patterns: Sequence[str]) -> list[Path]:
    """The files matching ``patterns``, each glob's matches sorted.

    As in Prometheus, a glob matching nothing is not an error; a pattern without glob
    characters is a file that must exist (reading it reports it missing). Directories that a
    glob matches are skipped.
    """
    paths: list[Path] = []
    for pattern in patterns:
        if glob.escape(pattern) == pattern:
            paths.append(Path(pattern))
        else:
            paths.extend(Path(p) for p in sorted(glob.glob(pattern)) if os.path.isfile(p))
    return paths


def _load(paths: Sequence[Path], min_query_offset: float) -> tuple[list[Group], list[Issue]]:
    """The groups and the issues of ``paths``, each file read once."""
    groups: list[Group] = []
    issues: list[Issue] = []
    names: dict[str, tuple[str, Position]] = {}
    for path in dict.fromkeys(Path(os.path.normpath(p)) for p in paths):
        try:
            document = load_yaml(path)
        except ConfigError as exc:
            issues.extend(exc.issues)
            continue
        checker = _FileChecker(document, min_query_offset, names)
        groups.extend(checker.groups())
        issues.extend(checker.issues)
    return groups, issues


class _FileChecker:
    """Validates one rule file, collecting every issue; builds the groups that are valid."""

    def __init__(
        self, document: YamlFile, min_query_offset: float,
        names: dict[str, tuple[str, Position]],
    ) -> None:
        self.file = document
        self.min_query_offset = min_query_offset
        self.group_names = names  # shared by all files: group names are unique across files
        self.issues: list[Issue] = []

    def error(self, position: Position, message: str) -> None:
        self.issues.append(self.file.issue(position, message))

    # generic helpers -----------------------------------------------------------------------

    def check_keys(self, mapping: CommentedMap, allowed: Sequence[str], where: str) -> None:
        for key in mapping:
            if key not in allowed:
                self.error(key_position(mapping, key), unknown_key(key, allowed, where))

    def require(self, mapping: CommentedMap, key: str, message: str) -> bool:
        if key in mapping:
            return True
        self.error(node_position(mapping), message)
        return False

    def string(self, mapping: CommentedMap, key: str) -> str | None:
        """The non-empty string at ``key``; None when absent or invalid (reported)."""
        if key not in mapping:
            return None
        value = mapping[key]
        if not isinstance(value, str):
            self.error(
                value_position(mapping, key), f"{key}: expected a string, got {describe(value)}"
            )
            return None
        if not value.strip():
            self.error(value_position(mapping, key), f"{key}: must not be empty")
            return None
        return str(value)

    def duration(self, mapping: CommentedMap, key: str, index: int | None = None) -> int | None:
        """Whole seconds of the duration at ``key`` (or item ``index`` of the list there)."""
        if index is None:
            value, position = mapping[key], value_position(mapping, key)
        else:
            value, position = mapping[key][index], item_position(mapping[key], index)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # a bare number: parse_duration explains the missing unit
        if not isinstance(value, str):
            self.error(position, f"{key}: expected a duration such as 1m, got {describe(value)}")
            return None
        try:
            seconds = parse_duration(str(value))
        except DurationError as exc:
            self.error(position, f"{key}: {exc}")
            return None
        if seconds != int(seconds):
            self.error(position, f"{key}: {value} is not a whole number of seconds")
            return None
        return int(seconds)

    def label_map(self, mapping: CommentedMap, key: str) -> dict[str, str] | None:
        """The label set at ``key``: valid names, non-empty string values."""
        if key not in mapping:
            return {}
        labels = mapping[key]
        if not isinstance(labels, CommentedMap):
            self.error(
                value_position(mapping, key),
                f"{key}: expected a mapping of label names to values, got {describe(labels)}",
            )
            return None
        out: dict[str, str] = {}
        for name, value in labels.items():
            problem = label_name_problem(name) if isinstance(name, str) else (
                f"{name!r} is not a valid label name")
            if problem:
                self.error(key_position(labels, name), f"{key}: {problem}")
            elif not isinstance(value, str):
                self.error(
                    value_position(labels, name),
                    f"{key}: the value of {name} must be a string, got {describe(value)}"
                    + (f"; quote it: '{_yaml_scalar(value)}'"
                       if isinstance(value, int | float) else ""),
                )
            elif not value:
                self.error(
                    value_position(labels, name),
                    f"{key}: the value of {name} is empty; leave the label out instead",
                )
            else:
                out[name] = str(value)
        return out if len(out) == len(labels) else None

    # the file --------------------------------------------------------------------------------

    def groups(self) -> list[Group]:
        root = self.file.root
        if not isinstance(root, CommentedMap):
            self.error(
                node_position(root),
                f"a rule file is a mapping with the key groups, not {describe(root)}",
            )
            return []
        self.check_keys(root, _FILE_KEYS, "a rule file")
        if not self.require(root, "groups", "the file has no groups; write groups: [] for none"):
            return []
        groups = root["groups"]
        if not isinstance(groups, CommentedSeq):
            self.error(
                value_position(root, "groups"),
                f"groups: expected a list of groups, got {describe(groups)}",
            )
            return []
        out = []
        for index, node in enumerate(groups):
            group = self.group(node, item_position(groups, index))
            if group is not None:
                out.append(group)
        return out

    def group(self, node: Any, position: Position) -> Group | None:
        if not isinstance(node, CommentedMap):
            self.error(
                position, f"a group is a mapping with name, interval, rules, not {describe(node)}"
            )
            return None
        before = len(self.issues)
        self.check_keys(node, _GROUP_KEYS, "a group")
        self.require(node, "name", "the group has no name")
        name = self.string(node, "name")
        if name is not None:
            self.check_unique_name(node, name)

        interval = self.interval(node)
        query_offset = self.query_offset(node)
        tenant = self.string(node, "tenant")
        if tenant is not None and (problem := tenant_problem(tenant)):
            self.error(value_position(node, "tenant"), f"tenant: {problem}")
        start = self.duration(node, "start") if "start" in node else 0
        settle = self.settle(node, interval, query_offset)
        labels = self.label_map(node, "labels")
        rules = self.rules(node)

        if (
            len(self.issues) > before or name is None or interval is None
            or query_offset is None or start is None or settle is None or labels is None
        ):
            return None
        return Group(
            name=name, interval=interval, query_offset=query_offset, tenant=tenant, start=start,
            settle=settle, labels=MappingProxyType(labels), rules=tuple(rules),
            file=self.file.name, line=position[0],
        )

    def check_unique_name(self, node: CommentedMap, name: str) -> None:
        position = value_position(node, "name")
        if name in self.group_names:
            file, (line, col) = self.group_names[name]
            where = f"line {line}, col {col}" if file == self.file.name else f"{file}:{line}:{col}"
            self.error(position, f"name: the group name {name!r} is already used at {where}")
        else:
            self.group_names[name] = (self.file.name, position)

    def interval(self, node: CommentedMap) -> int | None:
        if "interval" not in node:
            return DEFAULT_INTERVAL
        interval = self.duration(node, "interval")
        if interval is None:
            return None
        position = value_position(node, "interval")
        shown = format_duration(interval)
        if interval <= 0:
            self.error(position, "interval: must be longer than 0s")
        elif interval > DAY:
            self.error(position, f"interval: {shown} is longer than 24h, the longest interval")
        elif DAY % interval:
            lower, upper = _nearest_divisors(interval)
            self.error(
                position,
                f"interval: {shown} does not divide 24h; windows are aligned to midnight UTC, "
                f"so choose an interval that does, such as {format_duration(lower)} "
                f"or {format_duration(upper)}",
            )
        else:
            return interval
        return None

    def query_offset(self, node: CommentedMap) -> int | None:
        if "query_offset" not in node:
            return math.ceil(self.min_query_offset)
        offset = self.duration(node, "query_offset")
        if offset is not None and offset < self.min_query_offset:
            self.error(
                value_position(node, "query_offset"),
                f"query_offset: {format_duration(offset)} is less than "
                f"{format_duration(self.min_query_offset)} (query_end_cutoff + ingest_delay "
                "in the config): Tempo would answer for windows whose spans are not all "
                "queryable yet, and the missing spans would never be counted",
            )
            return None
        return offset

    def settle(
        self, node: CommentedMap, interval: int | None, query_offset: int | None
    ) -> tuple[int, ...] | None:
        if "settle" not in node:  # the defaults, rounded up to whole windows
            step = interval or DEFAULT_INTERVAL
            ages = {math.ceil(age / step) * step for age in DEFAULT_SETTLE}
            return tuple(sorted(a for a in ages if a > (query_offset or 0)))
        ages = node["settle"]
        if not isinstance(ages, CommentedSeq):
            self.error(
                value_position(node, "settle"),
                f"settle: expected a list of ages such as [10m, 1h], got {describe(ages)}",
            )
            return None
        out: list[int] = []
        valid = True
        for index in range(len(ages)):
            age = self.duration(node, "settle", index)
            position = item_position(ages, index)
            if age is None:
                valid = False
                continue
            shown = format_duration(age)
            message = None
            if age <= 0:
                message = "each age must be longer than 0s"
            elif interval and age % interval:
                message = f"{shown} is not a multiple of the interval {format_duration(interval)}"
            elif out and age <= out[-1]:
                message = (f"{shown} does not come after {format_duration(out[-1])}; "
                           "list the ages in ascending order, each once")
            elif query_offset is not None and age <= query_offset:
                message = (f"{shown} is not later than query_offset "
                           f"{format_duration(query_offset)}, when windows are first read")
            if message:
                self.error(position, f"settle: {message}")
                valid = False
            else:
                out.append(age)
        return tuple(out) if valid else None

    # rules -----------------------------------------------------------------------------------

    def rules(self, group: CommentedMap) -> list[Rule]:
        if not self.require(group, "rules", "the group has no rules; write rules: [] for none"):
            return []
        rules = group["rules"]
        if not isinstance(rules, CommentedSeq):
            self.error(
                value_position(group, "rules"),
                f"rules: expected a list of rules, got {describe(rules)}",
            )
            return []
        out: list[Rule] = []
        seen: dict[tuple[str, str], Rule] = {}
        for index, node in enumerate(rules):
            position = item_position(rules, index)
            rule = self.rule(node, position)
            if rule is None:
                continue
            for key, same, consequence in (
                ((rule.record, rule.expr), "record and expr", "they would share their state"),
                ((rule.record, repr(sorted(rule.labels.items()))), "record and labels",
                 "their series would collide"),
            ):
                other = seen.setdefault(key, rule)
                if other is not rule:
                    self.error(
                        position,
                        f"this rule has the same {same} as the rule at line {other.line}: "
                        f"{consequence}",
                    )
                    break
            else:
                out.append(rule)
        return out

    def rule(self, node: Any, position: Position) -> Rule | None:
        if not isinstance(node, CommentedMap):
            self.error(
                position, f"a rule is a mapping with record, expr and kind, not {describe(node)}"
            )
            return None
        before = len(self.issues)
        self.check_keys(node, _RULE_KEYS, "a rule")
        record = None
        if self.require(node, "record", "the rule has no record (the metric name to write)"):
            record = self.string(node, "record")
            if record is not None and (problem := metric_name_problem(record)):
                self.error(value_position(node, "record"), f"record: {problem}")
        parsed = None
        if self.require(node, "expr", "the rule has no expr (the TraceQL metrics query)"):
            parsed = self.expr(node)
        kind = None
        if self.require(
            node, "kind",
            "the rule has no kind; write kind: counter (a running total of the window values) "
            "or kind: gauge (the value of each window)",
        ):
            kind = node["kind"]
            if kind not in ("counter", "gauge"):
                shown = repr(kind) if isinstance(kind, str) else describe(kind)
                self.error(
                    value_position(node, "kind"), f"kind: {shown} is not counter or gauge"
                )
        labels = self.label_map(node, "labels")
        rename = self.rename(node, parsed)
        missing_value = self.string(node, "missing_value")
        limit = self.limit(node)

        if (
            len(self.issues) > before or record is None or parsed is None or labels is None
            or rename is None or limit is None or kind not in ("counter", "gauge")
        ):
            return None
        return Rule(
            record=record, expr=parsed.text, kind=kind, labels=MappingProxyType(labels),
            rename=MappingProxyType(rename), limit=limit, missing_value=missing_value,
            by=parsed.by, file=self.file.name, line=position[0],
        )

    def expr(self, node: CommentedMap) -> ParsedExpr | None:
        text = self.string(node, "expr")
        if text is None:
            return None
        position = value_position(node, "expr")
        try:
            parsed = parse_expr(text)
        except ExprError as exc:
            self.error(position, f"expr: {exc}")
            return None
        for attribute in parsed.by:
            if content := content_attribute(attribute):
                self.error(
                    position,
                    f"expr: by({attribute}) would make message content a label; {content} "
                    "holds prompt or completion text and must not be grouped by",
                )
        return parsed

    def rename(self, node: CommentedMap, parsed: ParsedExpr | None) -> dict[str, str] | None:
        """The rename map; also reports by() labels that collide once mapped."""
        rename: dict[str, str] = {}
        mapping = node.get("rename")
        if "rename" in node and not isinstance(mapping, CommentedMap):
            self.error(
                value_position(node, "rename"),
                f"rename: expected a mapping of label names to new names, got {describe(mapping)}",
            )
            return None
        if parsed is None:  # the expr is invalid (reported): nothing to check the names against
            return rename
        by_labels = {label_name_for(a): a for a in parsed.by}
        valid = True
        for old, new in (mapping or {}).items():
            if old not in by_labels:
                known = (f"its by() labels are {', '.join(by_labels)}" if by_labels
                         else "it has no by()")
                self.error(
                    key_position(mapping, old),
                    f"rename: {old!r} is not a label of this query; {known}",
                )
                valid = False
            elif not isinstance(new, str):
                self.error(
                    value_position(mapping, old),
                    f"rename: the new name of {old} must be a string, got {describe(new)}",
                )
                valid = False
            else:
                rename[old] = str(new)
        # The mapped names: each must be a valid label, and no two by() attributes may share one.
        owner: dict[str, str] = {}
        expr_position = value_position(node, "expr")
        for attribute in parsed.by:
            old = label_name_for(attribute)
            new = rename.get(old, old)
            position = value_position(mapping, old) if old in rename else expr_position
            where = f"rename: {old} -> {new}" if old in rename else f"expr: by({attribute})"
            if problem := label_name_problem(new):
                hint = "" if old in rename else f"; rename {old} to another name"
                self.error(position, f"{where}: {problem}{hint}")
                valid = False
            elif new in owner:
                self.error(
                    position,
                    f"{where}: the label {new!r} is already the label of by({owner[new]}); "
                    "the two would collide, rename one of them",
                )
                valid = False
            else:
                owner[new] = attribute
        return rename if valid else None

    def limit(self, node: CommentedMap) -> int | None:
        if "limit" not in node:
            return 0
        limit = node["limit"]
        position = value_position(node, "limit")
        if not isinstance(limit, int) or isinstance(limit, bool):
            self.error(position, f"limit: expected a whole number, got {describe(limit)}")
            return None
        if limit < 0:
            self.error(position, f"limit: {limit} is negative; write 0 for no limit")
            return None
        return int(limit)


def _yaml_scalar(value: float) -> str:
    """How YAML writes a number or boolean."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _nearest_divisors(seconds: int) -> tuple[int, int]:
    """The divisors of a day just below and above ``seconds`` (whole minutes from 1m on)."""
    unit = 60 if seconds >= 60 else 1
    divisors = [d for d in range(unit, DAY + 1, unit) if DAY % d == 0]
    lower = max(d for d in divisors if d < seconds)
    upper = min(d for d in divisors if d > seconds)
    return lower, upper

