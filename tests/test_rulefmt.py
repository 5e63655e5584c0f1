"""The rule file format: the key tables, and the keys and checks added to the format."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from bridge.rulefmt import FILE, GROUP, RULE, Level, check_rule_files
from bridge.rules import Group, Rule
from bridge.traceql import parse_expr


def model_fields(level: Level[Any]) -> set[str]:
    """The model fields a level's keys fill, each key with its own value."""
    filled: set[str] = set()
    for key in level.keys:
        value = parse_expr("{ } | rate()") if key.name == "expr" else object()
        fields = set(key.model_fields(value))
        assert not fields & filled, key.name  # two keys never fill one field
        filled |= fields
    return filled


def test_every_model_field_but_the_location_is_a_key() -> None:
    location = {"file", "line"}
    assert model_fields(RULE) == {f.name for f in dataclasses.fields(Rule)} - location
    assert model_fields(GROUP) == {f.name for f in dataclasses.fields(Group)} - location
    assert FILE.names == ["groups"]


def test_unknown_keys_list_the_table(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("groups:\n  - name: a\n    every: 1m\n    rules: []\n")
    (issue,) = check_rule_files([path], min_query_offset=45)
    assert issue.message == (
        "unknown key 'every' in a group; expected one of " + ", ".join(GROUP.names))
