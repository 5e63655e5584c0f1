"""The rule file format: the key tables, and the keys and checks added to the format."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from bridge.rulefmt import FILE, GROUP, RULE, Level, check_rule_files, load_rule_files
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


# -- idle_after, exemplars, exemplars_per_series --------------------------------------------


def load_group(tmp_path: Path, keys: str) -> Group:
    path = tmp_path / "r.yaml"
    path.write_text(f"groups:\n  - name: g\n{keys}    rules: []\n")
    (group,) = load_rule_files([str(path)], min_query_offset=45)
    return group


@pytest.mark.parametrize(
    ("keys", "idle_after", "exemplars", "per_series"),
    [
        ("", 3600, True, 1),  # the defaults
        ("    interval: 2h\n", 7200, True, 1),  # never shorter than the interval
        ("    interval: 5m\n    idle_after: 5m\n", 300, True, 1),
        ("    idle_after: 0\n", 0, True, 1),  # never idle
        ("    interval: 2h\n    idle_after: 0s\n", 0, True, 1),
        ("    idle_after: 1d\n    exemplars: false\n", 86400, False, 1),
        ("    exemplars: true\n    exemplars_per_series: 5\n", 3600, True, 5),
    ],
)
def test_idle_after_and_exemplars(
    tmp_path: Path, keys: str, idle_after: int, exemplars: bool, per_series: int
) -> None:
    group = load_group(tmp_path, keys)
    assert (group.idle_after, group.exemplars, group.exemplars_per_series) == (
        idle_after, exemplars, per_series)


def test_a_change_of_the_new_keys_is_a_change_of_the_group(tmp_path: Path) -> None:
    base = load_group(tmp_path, "")
    assert load_group(tmp_path, "    idle_after: 1h\n") == base
    for keys in ("    idle_after: 2h\n", "    exemplars: false\n",
                 "    exemplars_per_series: 2\n"):
        assert load_group(tmp_path, keys) != base


def test_the_readme_rules_reference_is_valid_and_shows_every_key(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    reference = readme.split("## Rules reference", 1)[1]
    (example,) = [b for b in re.findall(r"```yaml\n(.*?)```", reference, re.S)
                  if b.startswith("groups:")]
    path = tmp_path / "rules.yaml"
    path.write_text(example)
    (group,) = load_rule_files([str(path)], min_query_offset=45)
    assert len(group.rules) == 1
    written = set(re.findall(r"(?m)^\s*-?\s*(\w+):", example))
    assert set(FILE.names) | set(GROUP.names) | set(RULE.names) <= written
    assert (group.idle_after, group.exemplars, group.exemplars_per_series) == (3600, True, 1)
