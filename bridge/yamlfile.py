"""Read a YAML file keeping the line and column of every key and value, for precise errors.

:func:`load_yaml` parses a file; the position functions say where a key, value or list item
is written; :class:`Checker` reads typed values out of a document and collects an Issue at
the right position for each problem, whatever the document means.
"""

from __future__ import annotations

import datetime
import difflib
import errno
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, SequenceNode

from bridge.durations import DurationError, parse_duration
from bridge.errors import ConfigError, Issue

Position = tuple[int, int]
"""1-based (line, column); (0, 0) means the whole file."""

WHOLE_FILE: Position = (0, 0)


@dataclass(frozen=True)
class YamlFile:
    """A parsed YAML document: ``root`` is a CommentedMap, CommentedSeq, scalar (never None)."""

    name: str
    root: Any

    def issue(self, position: Position, message: str) -> Issue:
        """An Issue in this file at ``position``."""
        return Issue(self.name, position[0], position[1], message)


def load_yaml(path: Path, *, name: str | None = None) -> YamlFile:
    """Parse ``path`` (shown as ``name`` in issues); raises ConfigError for anything unreadable."""
    shown = name if name is not None else str(path)

    def fail(position: Position, message: str) -> ConfigError:
        return ConfigError([Issue(shown, position[0], position[1], message)])

    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise fail(WHOLE_FILE, os_error_message(exc)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise fail((line, col), "the file is not UTF-8 text") from None
    yaml = YAML(typ="rt")
    try:
        root = yaml.load(text)
    except DuplicateKeyError:
        raise ConfigError(_duplicate_keys(shown, yaml.compose(text))) from None
    except MarkedYAMLError as exc:
        raise fail(_mark_position(exc.problem_mark), _yaml_error_message(exc)) from None
    except YAMLError as exc:  # unmarked errors are rare: report them on the whole file
        raise fail(WHOLE_FILE, f"invalid YAML: {exc}") from None
    if root is None:
        raise fail(WHOLE_FILE, "the file is empty")
    return YamlFile(shown, root)


def os_error_message(exc: OSError) -> str:
    """Why a file could not be read, as the end of a sentence."""
    if exc.errno == errno.ENOENT:
        return "the file does not exist"
    if exc.errno == errno.EISDIR:
        return "this is a directory, not a file"
    if exc.errno == errno.EACCES:
        return "permission denied: the file is not readable by this user"
    return f"cannot read the file: {exc.strerror or exc}"


def _mark_position(mark: Any) -> Position:
    if mark is None:
        return WHOLE_FILE
    return (int(mark.line) + 1, int(mark.column) + 1)


def _yaml_error_message(exc: MarkedYAMLError) -> str:
    if str(exc.context).startswith("expected a single document"):
        return "invalid YAML: a second document starts here; the file must hold only one"
    message = f"invalid YAML: {exc.problem}"
    if "'\\t'" in str(exc.problem):
        message += "; indent with spaces, not tabs"
    if exc.context and exc.context_mark is not None:
        line, col = _mark_position(exc.context_mark)
        message += f" ({exc.context} at line {line}, col {col})"
    return message


def _duplicate_keys(name: str, node: Node | None) -> list[Issue]:
    """Every duplicate key in the composed tree, each naming where the key was first set."""
    issues: list[Issue] = []
    seen_nodes: set[int] = set()

    def walk(current: Node | None) -> None:
        if current is None or id(current) in seen_nodes:
            return
        seen_nodes.add(id(current))
        if isinstance(current, MappingNode):
            first: dict[str, Position] = {}
            for key, value in current.value:
                key_text = str(key.value)
                position = _mark_position(key.start_mark)
                if key_text == "<<":  # YAML merge key
                    pass
                elif key_text in first:
                    line, col = first[key_text]
                    issues.append(Issue(
                        name, position[0], position[1],
                        f"duplicate key {key_text!r}; it is already set at line {line}, col {col}",
                    ))
                else:
                    first[key_text] = position
                walk(value)
        elif isinstance(current, SequenceNode):
            for item in current.value:
                walk(item)

    walk(node)
    return issues


def node_position(node: Any) -> Position:
    """Where a mapping or list starts; (1, 1) for anything without a recorded position."""
    lc = getattr(node, "lc", None)
    if lc is None or lc.line is None:
        return (1, 1)
    return (int(lc.line) + 1, int(lc.col) + 1)


def key_position(mapping: CommentedMap, key: Any) -> Position:
    """Where ``key`` is written in ``mapping`` (the mapping's start for a merged-in key)."""
    try:
        line, col = mapping.lc.key(key)
    except (KeyError, TypeError):
        return node_position(mapping)
    return (int(line) + 1, int(col) + 1)


def value_position(mapping: CommentedMap, key: Any) -> Position:
    """Where the value of ``key`` is written; the key's position when the value is empty."""
    if mapping.get(key) is None:
        return key_position(mapping, key)
    try:
        line, col = mapping.lc.value(key)
    except (KeyError, TypeError):
        return key_position(mapping, key)
    return (int(line) + 1, int(col) + 1)


def item_position(seq: CommentedSeq, index: int) -> Position:
    """Where item ``index`` of ``seq`` is written."""
    try:
        line, col = seq.lc.item(index)
    except (KeyError, TypeError):
        return node_position(seq)
    return (int(line) + 1, int(col) + 1)


def locate(root: Any, path: Sequence[str | int], *, key: bool = False) -> Position:
    """Position of the node at ``path`` (keys and list indexes) below ``root``.

    With ``key=True`` the position of the last key rather than of its value. A path that
    leaves the document stops at the deepest node that exists.
    """
    node = root
    position = node_position(root)
    for depth, part in enumerate(path):
        last = depth == len(path) - 1
        if isinstance(node, CommentedMap) and part in node:
            position = key_position(node, part) if key and last else value_position(node, part)
            node = node[part]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
            position = item_position(node, part)
            node = node[part]
        else:
            break
    return position


def lookup(data: Any, path: Sequence[str | int]) -> tuple[bool, Any]:
    """``(found, value)`` at the key path ``path`` (keys and list indexes) in nested mappings
    and lists, as parsed from YAML or JSON; ``(False, None)`` when the path leaves the data."""
    for part in path:
        if isinstance(data, Mapping):
            found = part in data
        else:
            found = (isinstance(data, list) and isinstance(part, int)
                     and not isinstance(part, bool) and 0 <= part < len(data))
        if not found:
            return False, None
        data = data[part]
    return True, data


def to_plain(node: Any) -> Any:
    """The document as plain dicts, lists, str, int, float, bool (for pydantic)."""
    if isinstance(node, dict):
        return {to_plain(k): to_plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [to_plain(v) for v in node]
    if isinstance(node, bool):
        return bool(node)
    if isinstance(node, str):
        return str(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    return node


def describe(value: Any) -> str:
    """A short phrase naming a YAML value and its type, for messages ("a list", "the number 5")."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {str(value)!r}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, TaggedScalar):
        return f"a value tagged {value.tag}"
    if isinstance(value, datetime.date):
        return f"the date {value.isoformat()}"
    return f"a {type(value).__name__}"


def unknown_key(key: Any, allowed: Sequence[str], where: str) -> str:
    """The message for ``key`` not being one of ``allowed`` in ``where`` (e.g. "a group")."""
    close = difflib.get_close_matches(str(key), allowed, n=1)
    if close:
        hint = f"did you mean {close[0]!r}?"
    elif len(allowed) == 1:
        hint = f"the only key there is {allowed[0]}"
    else:
        hint = "expected one of " + ", ".join(allowed)
    return f"unknown key {key!r}{' in ' + where if where else ''}; {hint}"


class Checker:
    """Reads typed values out of one YAML document, collecting an Issue for each problem.

    Every accessor reports what is wrong at the value's position, prefixed by its key
    (``interval: ...``), and returns None for a missing or invalid value.
    """

    def __init__(self, document: YamlFile) -> None:
        self.file = document
        self.issues: list[Issue] = []

    def error(self, position: Position, message: str) -> None:
        """Report ``message`` at ``position`` of this document."""
        self.issues.append(self.file.issue(position, message))

    def check_keys(self, mapping: CommentedMap, allowed: Sequence[str], where: str) -> None:
        """Report each key of ``mapping`` that is not ``allowed`` in ``where`` ("a group")."""
        for key in mapping:
            if key not in allowed:
                self.error(key_position(mapping, key), unknown_key(key, allowed, where))

    def require(self, mapping: CommentedMap, key: str, message: str) -> bool:
        """Whether ``key`` is in ``mapping``; reports ``message`` at the mapping when not."""
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
            self.expected(mapping, key, "a string")
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

    def whole_number(self, mapping: CommentedMap, key: str) -> int | None:
        """The integer at ``key`` (not a boolean, not a float); None when invalid (reported)."""
        value = mapping[key]
        if not isinstance(value, int) or isinstance(value, bool):
            self.expected(mapping, key, "a whole number")
            return None
        return int(value)

    def boolean(self, mapping: CommentedMap, key: str) -> bool | None:
        """The boolean at ``key`` (YAML's true or false); None when invalid (reported)."""
        value = mapping[key]
        if not isinstance(value, bool):
            self.expected(mapping, key, "true or false")
            return None
        return bool(value)

    def mapping(self, mapping: CommentedMap, key: str, expected: str) -> CommentedMap | None:
        """The mapping at ``key``; None when it is something else (reported as not
        ``expected``, such as "a mapping of label names to values")."""
        value = mapping[key]
        if not isinstance(value, CommentedMap):
            self.expected(mapping, key, expected)
            return None
        return value

    def sequence(self, mapping: CommentedMap, key: str, expected: str) -> CommentedSeq | None:
        """The list at ``key``; None when it is something else (reported as not ``expected``,
        such as "a list of groups")."""
        value = mapping[key]
        if not isinstance(value, CommentedSeq):
            self.expected(mapping, key, expected)
            return None
        return value

    def expected(self, mapping: CommentedMap, key: str, expected: str) -> None:
        """Report that the value at ``key`` is not ``expected`` ("a list of ages such as
        [10m, 1h]"), naming what it is instead."""
        got = describe(mapping[key])
        self.error(value_position(mapping, key), f"{key}: expected {expected}, got {got}")
