"""The rule file format: reads and checks rule files into the model of :mod:`bridge.rules`.

Each level of a rule file (the file, a group, a rule) is a table of its keys, in the order
they are read and listed in messages. A key says how its value is read and checked, what
it is when absent (or that it is required), and which model fields it fills; checks that
involve several keys run once the keys are read. A new key is one declaration plus its
reader. Every problem is an Issue at ``file:line:col``, and a file is checked whole: every
issue is reported, not only the first.
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from ruamel.yaml.comments import CommentedMap

from bridge.durations import DAY, format_duration
from bridge.errors import ConfigError, Issue
from bridge.names import label_name_problem, metric_name_problem, tenant_problem
from bridge.rules import (
    DEFAULT_EXEMPLARS,
    DEFAULT_EXEMPLARS_PER_SERIES,
    DEFAULT_IDLE_AFTER,
    Group,
    Rule,
    by_labels,
    content_attribute,
    label_name_for,
)
from bridge.traceql import ExprError, ParsedExpr, parse_expr
from bridge.yamlfile import (
    Checker,
    Position,
    YamlFile,
    describe,
    item_position,
    key_position,
    load_yaml,
    node_position,
    value_position,
)

DEFAULT_INTERVAL = 60
DEFAULT_SETTLE = (600, 3600)


def load_rule_files(patterns: Sequence[str], *, min_query_offset: float) -> list[Group]:
    """The groups of every file matching ``patterns`` (absolute globs), in file order.

    ``min_query_offset`` is the shortest ``query_offset`` Tempo's settings allow (the
    config's ``tempo.min_query_offset``). Raises ConfigError with every issue in every file.
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
        reader = _RuleFile(document, min_query_offset, names)
        groups.extend(reader.groups())
        issues.extend(reader.issues)
    return groups, issues


# -- the key tables -----------------------------------------------------------------------------

Values = dict[str, Any]
"""The values read so far at one level, by key: later keys and the checks read earlier ones.
A value is None when it cannot be used (it is invalid, and reported); whether the mapping is
valid is whether reading it reported anything."""

_M = TypeVar("_M")


@dataclass(frozen=True)
class Key:
    """One key of a mapping in a rule file."""

    name: str
    read: Callable[[_RuleFile, CommentedMap, str, Values], Any]
    """Reads and checks the value of the present key; None when invalid (and reported)."""
    default: Callable[[_RuleFile, Values], Any] | None = None
    """The value when the key is absent; None for a required key."""
    missing: str = ""
    """The message when a required key is absent."""
    fields: Callable[[Any], Mapping[str, Any]] | None = None
    """The model fields the value fills; by default the field of the key's name."""

    def model_fields(self, value: Any) -> Mapping[str, Any]:
        return {self.name: value} if self.fields is None else self.fields(value)


@dataclass(frozen=True)
class Level(Generic[_M]):
    """A kind of mapping in a rule file: its keys and checks, and the model it builds."""

    what: str  # "a group", for unknown keys
    shape: str  # what the mapping must be, for a value that is no mapping
    keys: tuple[Key, ...]
    checks: tuple[Callable[[_RuleFile, CommentedMap, Values], None], ...]
    build: Callable[[dict[str, Any], str, int], _M]  # the fields, the file and the line

    @property
    def names(self) -> list[str]:
        return [key.name for key in self.keys]


def _default(value: Any) -> Callable[[_RuleFile, Values], Any]:
    return lambda reader, values: value


def _string(reader: _RuleFile, node: CommentedMap, key: str, values: Values) -> str | None:
    return reader.string(node, key)


def _labels(
    reader: _RuleFile, node: CommentedMap, key: str, values: Values
) -> Mapping[str, str] | None:
    labels = reader.label_map(node, key)
    return None if labels is None else MappingProxyType(labels)


# the file ------------------------------------------------------------------------------------


def _groups(reader: _RuleFile, node: CommentedMap, key: str, values: Values) -> list[Group]:
    groups = reader.sequence(node, key, "a list of groups")
    if groups is None:
        return []
    out = []
    for index, item in enumerate(groups):
        group = reader.read(GROUP, item, item_position(groups, index))
        if group is not None:
            out.append(group)
    return out


# a group -------------------------------------------------------------------------------------


def _group_name(reader: _RuleFile, node: CommentedMap, key: str, values: Values) -> str | None:
    name = reader.string(node, key)
    if name is not None:
        reader.check_unique_name(node, name)
    return name


def _interval(reader: _RuleFile, node: CommentedMap, key: str, values: Values) -> int | None:
    interval = reader.duration(node, key)
    if interval is None:
        return None
    position = value_position(node, key)
    shown = format_duration(interval)
    if interval <= 0:
        reader.error(position, f"{key}: must be longer than 0s")
    elif interval > DAY:
        reader.error(position, f"{key}: {shown} is longer than 24h, the longest interval")
    elif DAY % interval:
        lower, upper = _nearest_divisors(interval)
        reader.error(
            position,
            f"{key}: {shown} does not divide 24h; windows are aligned to midnight UTC, "
            f"so choose an interval that does, such as {format_duration(lower)} "
            f"or {format_duration(upper)}",
        )
    else:
        return interval
    return None


def _query_offset(reader: _RuleFile, node: CommentedMap, key: str, values: Values) -> int | None:
    offset = reader.duration(node, key)
    if offset is not None and offset < reader.min_query_offset:
        reader.error(
            value_position(node, key),
            f"{key}: {format_duration(offset)} is less than "
            f"{format_duration(reader.min_query_offset)} (query_end_cutoff + ingest_delay "
            "in the config): Tempo would answer for windows whose spans are not all "
            "queryable yet, and the missing spans would never be counted",
        )
        return None
    return offset


def _default_query_offset(reader: _RuleFile, values: Values) -> int:
    """The minimum, rounded up to a whole second."""
    return math.ceil(reader.min_query_offset)


def _tenant(reader: _RuleFile, node: CommentedMap, key: str, values: Values) -> str | None:
    tenant = reader.string(node, key)
    if tenant is not None and (problem := tenant_problem(tenant)):
        reader.error(value_position(node, key), f"{key}: {problem}")
    return tenant


def _start(reader: _RuleFile, node: CommentedMap, key: str, values: Values) -> int | None:
    return reader.duration(node, key)


def _default_settle(reader: _RuleFile, values: Values) -> tuple[int, ...]:
    """The default ages, rounded up to whole windows, those after the first read."""
    interval, query_offset = values["interval"], values["query_offset"]
    step = interval or DEFAULT_INTERVAL
    ages = {math.ceil(age / step) * step for age in DEFAULT_SETTLE}
    return tuple(sorted(a for a in ages if a > (query_offset or 0)))


def _settle(
    reader: _RuleFile, node: CommentedMap, key: str, values: Values
) -> tuple[int, ...] | None:
    ages = reader.sequence(node, key, "a list of ages such as [10m, 1h]")
    if ages is None:
        return None
    interval, query_offset = values["interval"], values["query_offset"]
    out: list[int] = []
    valid = True
    for index in range(len(ages)):
        age = reader.duration(node, key, index)
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
            reader.error(position, f"{key}: {message}")
            valid = False
        else:
            out.append(age)
    return tuple(out) if valid else None


def _default_idle_after(reader: _RuleFile, values: Values) -> int:
    """An hour, or the interval when it is longer."""
    return max(DEFAULT_IDLE_AFTER, values["interval"] or 0)


def _idle_after(reader: _RuleFile, node: CommentedMap, key: str, values: Values) -> int | None:
    idle_after = reader.duration(node, key)
    interval = values["interval"]
    if idle_after and interval and idle_after < interval:
        reader.error(
            value_position(node, key),
            f"{key}: {format_duration(idle_after)} is shorter than the interval "
            f"{format_duration(interval)}: a series would stop being written between two of "
            f"its windows; write at least {format_duration(interval)}, or 0 to write every "
            "series at every window end",
        )
        return None
    return idle_after


def _boolean(reader: _RuleFile, node: CommentedMap, key: str, values: Values) -> bool | None:
    return reader.boolean(node, key)


def _exemplars_per_series(
    reader: _RuleFile, node: CommentedMap, key: str, values: Values
) -> int | None:
    count = reader.whole_number(node, key)
    if count is not None and count < 1:
        reader.error(
            value_position(node, key),
            f"{key}: {count} is less than 1; write exemplars: false for no exemplars",
        )
        return None
    return count


def _rules(
    reader: _RuleFile, node: CommentedMap, key: str, values: Values
) -> tuple[Rule, ...] | None:
    rules = reader.sequence(node, key, "a list of rules")
    if rules is None:
        return None
    reader.group = (node, values)
    out: list[Rule] = []
    seen: dict[tuple[str, str], Rule] = {}
    for index, item in enumerate(rules):
        position = item_position(rules, index)
        rule = reader.read(RULE, item, position)
        if rule is None:
            continue
        for identity, same, consequence in (
            ((rule.record, rule.expr), "record and expr", "they would share their state"),
            ((rule.record, repr(sorted(rule.labels.items()))), "record and labels",
             "their series would collide"),
        ):
            other = seen.setdefault(identity, rule)
            if other is not rule:
                reader.error(
                    position,
                    f"this rule has the same {same} as the rule at line {other.line}: "
                    f"{consequence}",
                )
                break
        else:
            out.append(rule)
    return tuple(out)


# a rule --------------------------------------------------------------------------------------


def _record(reader: _RuleFile, node: CommentedMap, key: str, values: Values) -> str | None:
    record = reader.string(node, key)
    if record is not None and (problem := metric_name_problem(record)):
        reader.error(value_position(node, key), f"{key}: {problem}")
    return record


def _expr(reader: _RuleFile, node: CommentedMap, key: str, values: Values) -> ParsedExpr | None:
    text = reader.string(node, key)
    if text is None:
        return None
    position = value_position(node, key)
    try:
        parsed = parse_expr(text)
    except ExprError as exc:
        reader.error(position, f"{key}: {exc}")
        return None
    for attribute in parsed.by:
        if content := content_attribute(attribute):
            reader.error(
                position,
                f"{key}: by({attribute}) would make message content a label; {content} "
                "holds prompt or completion text and must not be grouped by",
            )
    return parsed


def _expr_fields(parsed: ParsedExpr) -> Mapping[str, Any]:
    return {"expr": parsed.text, "by": parsed.by}


def _kind(reader: _RuleFile, node: CommentedMap, key: str, values: Values) -> str | None:
    kind = node[key]
    if kind in ("counter", "gauge"):
        return str(kind)
    shown = repr(kind) if isinstance(kind, str) else describe(kind)
    reader.error(value_position(node, key), f"{key}: {shown} is not counter or gauge")
    return None


def _rename(
    reader: _RuleFile, node: CommentedMap, key: str, values: Values
) -> Mapping[str, str] | None:
    """The rename map, its invalid entries reported and left out (so that the by() labels
    are still checked against the others)."""
    mapping = reader.mapping(node, key, "a mapping of label names to new names")
    if mapping is None:
        return None
    rename: dict[str, str] = {}
    parsed: ParsedExpr | None = values["expr"]
    if parsed is None:  # the expr is invalid (reported): nothing to check the names against
        return MappingProxyType(rename)
    by_labels = {label_name_for(a): a for a in parsed.by}
    for old, new in mapping.items():
        if old not in by_labels:
            known = (f"its by() labels are {', '.join(by_labels)}" if by_labels
                     else "it has no by()")
            reader.error(
                key_position(mapping, old), f"{key}: {old!r} is not a label of this query; {known}"
            )
        elif not isinstance(new, str):
            reader.error(
                value_position(mapping, old),
                f"{key}: the new name of {old} must be a string, got {describe(new)}",
            )
        else:
            rename[old] = str(new)
    return MappingProxyType(rename)


def _no_rename(reader: _RuleFile, values: Values) -> Mapping[str, str]:
    return MappingProxyType({})


def _limit(reader: _RuleFile, node: CommentedMap, key: str, values: Values) -> int | None:
    limit = reader.whole_number(node, key)
    if limit is not None and limit < 0:
        reader.error(value_position(node, key), f"{key}: {limit} is negative; write 0 for no limit")
        return None
    return limit


def _check_by_labels(reader: _RuleFile, node: CommentedMap, values: Values) -> None:
    """Each by() attribute's label, once mapped, must be a valid label name of its own."""
    parsed: ParsedExpr | None = values["expr"]
    rename: Mapping[str, str] | None = values["rename"]
    if parsed is None or rename is None:  # reported already
        return
    mapping = node.get("rename")
    owner: dict[str, str] = {}
    expr_position = value_position(node, "expr")
    for attribute in parsed.by:
        old = label_name_for(attribute)
        new = rename.get(old, old)
        position = value_position(mapping, old) if old in rename else expr_position
        where = f"rename: {old} -> {new}" if old in rename else f"expr: by({attribute})"
        if problem := label_name_problem(new):
            hint = "" if old in rename else f"; rename {old} to another name"
            reader.error(position, f"{where}: {problem}{hint}")
        elif new in owner:
            reader.error(
                position,
                f"{where}: the label {new!r} is already the label of by({owner[new]}); "
                "the two would collide, rename one of them",
            )
        else:
            owner[new] = attribute


def _check_shadowed_labels(reader: _RuleFile, node: CommentedMap, values: Values) -> None:
    """A rule label, or a label of its group, must not have the name of one of the rule's
    by() labels: it would replace the query's value in every series, and the series would
    collide. A group label is reported at the group, once for each rule it shadows (where
    the rule does not set that label itself)."""
    parsed: ParsedExpr | None = values["expr"]
    labels: Mapping[str, str] | None = values["labels"]
    rename: Mapping[str, str] | None = values["rename"]
    if parsed is None or labels is None or rename is None:  # reported already
        return
    query_labels = by_labels(parsed.by, rename)
    for name in labels:
        if name in query_labels:
            why = _shadowed(name, query_labels[name], "this label", "every series")
            reader.error(key_position(node["labels"], name), f"labels: {why}")
    group, group_values = reader.group
    record: str | None = values["record"]
    for name in group_values["labels"] or {}:
        if name in query_labels and name not in labels:
            line = node_position(node)[0]
            where = (f", in the rule {record} (line {line})," if record
                     else f", in the rule at line {line},")
            why = _shadowed(name, query_labels[name], "this group label",
                            "every series of that rule", where)
            reader.error(key_position(group["labels"], name), f"labels: {why}")


def _shadowed(name: str, attribute: str, label: str, series: str, where: str = "") -> str:
    """Why a label named ``name`` must not override the by() label of ``attribute``."""
    old = label_name_for(attribute)
    renamed = "" if old == name else f", renamed from {old}"
    whose = "the rule's" if where else "the"
    return (
        f"{name} is also{where} the label of by({attribute}){renamed}: {label} would replace "
        f"the query's value in {series}, and series that differ only in {name} would "
        f"collide; rename {whose} by() label (rename: {{{old}: another_name}}) "
        "or drop this label"
    )


RULE: Level[Rule] = Level(
    what="a rule",
    shape="a rule is a mapping with record, expr and kind",
    keys=(
        Key("record", _record, missing="the rule has no record (the metric name to write)"),
        Key("expr", _expr, missing="the rule has no expr (the TraceQL metrics query)",
            fields=_expr_fields),
        Key("kind", _kind, missing=(
            "the rule has no kind; write kind: counter (a running total of the window values) "
            "or kind: gauge (the value of each window)")),
        Key("labels", _labels, _default(MappingProxyType({}))),
        Key("rename", _rename, _no_rename),
        Key("missing_value", _string, _default(None)),
        Key("limit", _limit, _default(0)),
    ),
    checks=(_check_by_labels, _check_shadowed_labels),
    build=lambda fields, file, line: Rule(**fields, file=file, line=line),
)

GROUP: Level[Group] = Level(
    what="a group",
    shape="a group is a mapping with name, interval, rules",
    keys=(
        Key("name", _group_name, missing="the group has no name"),
        Key("interval", _interval, _default(DEFAULT_INTERVAL)),
        Key("query_offset", _query_offset, _default_query_offset),
        Key("tenant", _tenant, _default(None)),
        Key("start", _start, _default(0)),
        Key("settle", _settle, _default_settle),
        Key("idle_after", _idle_after, _default_idle_after),
        Key("exemplars", _boolean, _default(DEFAULT_EXEMPLARS)),
        Key("exemplars_per_series", _exemplars_per_series,
            _default(DEFAULT_EXEMPLARS_PER_SERIES)),
        Key("labels", _labels, _default(MappingProxyType({}))),
        Key("rules", _rules, missing="the group has no rules; write rules: [] for none"),
    ),
    checks=(),
    build=lambda fields, file, line: Group(**fields, file=file, line=line),
)

FILE: Level[list[Group]] = Level(
    what="a rule file",
    shape="a rule file is a mapping with the key groups",
    keys=(
        Key("groups", _groups, missing="the file has no groups; write groups: [] for none"),
    ),
    checks=(),
    build=lambda fields, file, line: list(fields["groups"]),
)


# -- reading one file ---------------------------------------------------------------------------


class _RuleFile(Checker):
    """Checks one rule file, collecting every issue; builds the groups that are valid."""

    def __init__(
        self, document: YamlFile, min_query_offset: float,
        names: dict[str, tuple[str, Position]],
    ) -> None:
        super().__init__(document)
        self.min_query_offset = min_query_offset
        self.group_names = names  # shared by all files: group names are unique across files
        self.group: tuple[CommentedMap, Values] = (CommentedMap(), {"labels": None})
        """The group whose rules are being read, and its values."""

    def groups(self) -> list[Group]:
        """The valid groups of the file (the issues are in ``issues``)."""
        root = self.file.root
        return self.read(FILE, root, node_position(root)) or []

    def read(self, level: Level[_M], node: Any, position: Position) -> _M | None:
        """The model ``level`` builds from ``node`` at ``position``; None when it has issues."""
        if not isinstance(node, CommentedMap):
            self.error(position, f"{level.shape}, not {describe(node)}")
            return None
        before = len(self.issues)
        self.check_keys(node, level.names, level.what)
        values: Values = {}
        for key in level.keys:
            if key.name in node:
                values[key.name] = key.read(self, node, key.name, values)
            elif key.default is not None:
                values[key.name] = key.default(self, values)
            else:
                self.error(node_position(node), key.missing)
                values[key.name] = None
        for check in level.checks:
            check(self, node, values)
        if len(self.issues) > before:
            return None
        fields: dict[str, Any] = {}
        for key in level.keys:
            fields.update(key.model_fields(values[key.name]))
        return level.build(fields, self.file.name, position[0])

    def check_unique_name(self, node: CommentedMap, name: str) -> None:
        position = value_position(node, "name")
        if name in self.group_names:
            file, (line, col) = self.group_names[name]
            where = f"line {line}, col {col}" if file == self.file.name else f"{file}:{line}:{col}"
            self.error(position, f"name: the group name {name!r} is already used at {where}")
        else:
            self.group_names[name] = (self.file.name, position)

    def label_map(self, mapping: CommentedMap, key: str) -> dict[str, str] | None:
        """The label set at ``key``: valid names, non-empty string values."""
        labels = self.mapping(mapping, key, "a mapping of label names to values")
        if labels is None:
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
