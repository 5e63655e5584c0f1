"""``tempo-bridge check``: a config with its rule files, or rule files alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.check import check, format_issues
from bridge.errors import Issue

REPO = Path(__file__).parent.parent
BAD_RULES = Path(__file__).parent / "fixtures" / "rules" / "bad"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_the_example_config_and_default_rules_are_valid() -> None:
    assert check(REPO / "examples" / "bridge.yaml", []) == []
    assert check(None, [REPO / "rules" / "openrouter.yaml"]) == []


def test_nothing_to_check() -> None:
    assert check(None, []) == []


def test_rule_files_alone() -> None:
    path = BAD_RULES / "kind_missing.yaml"
    assert check(None, [path]) == [Issue(
        str(path), 4, 9,
        "the rule has no kind; write kind: counter (a running total of the window values) "
        "or kind: gauge (the value of each window)",
    )]


def test_rule_files_alone_use_the_default_minimum_offset(tmp_path: Path) -> None:
    rules = write(tmp_path / "r.yaml", "groups:\n  - {name: g, query_offset: 44s, rules: []}\n")
    assert check(None, [rules]) == [Issue(
        str(rules), 2, 29,
        "query_offset: 44s is less than 45s (query_end_cutoff + ingest_delay in the config): "
        "Tempo would answer for windows whose spans are not all queryable yet, and the missing "
        "spans would never be counted",
    )]


def test_the_config_rule_files_are_checked_with_its_tempo_settings(tmp_path: Path) -> None:
    write(tmp_path / "bridge.yaml", "tempo:\n  ingest_delay: 1m\nrule_files: [rules/*.yaml]\n")
    rules = write(
        tmp_path / "rules" / "a.yaml", "groups:\n  - name: g\n    query_offset: 1m\n    rules: []\n"
    )
    assert check(tmp_path / "bridge.yaml", []) == [Issue(
        str(rules), 3, 19,
        "query_offset: 1m is less than 1m30s (query_end_cutoff + ingest_delay in the config): "
        "Tempo would answer for windows whose spans are not all queryable yet, and the missing "
        "spans would never be counted",
    )]


def test_config_and_rule_file_issues_together(tmp_path: Path) -> None:
    config = write(tmp_path / "bridge.yaml", "tempo: {url: tempo}\nrule_files: [rules/*.yaml]\n")
    rules = BAD_RULES / "limit_negative.yaml"
    assert check(config, [rules]) == sorted([
        Issue(str(config), 1, 14, "tempo.url: 'tempo' has no scheme; write http://tempo"),
        Issue(str(rules), 7, 16, "limit: -1 is negative; write 0 for no limit"),
    ])


def test_group_names_are_unique_across_the_config_and_the_command_line(tmp_path: Path) -> None:
    write(tmp_path / "bridge.yaml", "rule_files: [rules/*.yaml]\n")
    first = write(tmp_path / "rules" / "a.yaml", "groups:\n  - name: g\n    rules: []\n")
    second = write(tmp_path / "b.yaml", "groups:\n  - name: g\n    rules: []\n")
    assert check(tmp_path / "bridge.yaml", [first]) == []  # the same file is read once
    assert check(tmp_path / "bridge.yaml", [second]) == [Issue(
        str(second), 2, 11, f"name: the group name 'g' is already used at {first}:2:11")]


def test_a_config_naming_a_missing_rule_file(tmp_path: Path) -> None:
    write(tmp_path / "bridge.yaml", "rule_files: [rules.yaml, 'more/*.yaml']\n")
    assert check(tmp_path / "bridge.yaml", []) == [
        Issue(str(tmp_path / "rules.yaml"), 0, 0, "the file does not exist")]


def test_a_missing_config(tmp_path: Path) -> None:
    assert format_issues(check(tmp_path / "bridge.yaml", [])) == (
        f"{tmp_path}/bridge.yaml: the file does not exist")


@pytest.mark.parametrize(
    ("issues", "text"),
    [
        ([], ""),
        ([Issue("b.yaml", 2, 3, "two"), Issue("a.yaml", 10, 1, "one")],
         "a.yaml:10:1: one\nb.yaml:2:3: two"),
        ([Issue("<environment>", 0, 0, "TEMPO_BRIDGE_TEMPO__URL: bad"),
          Issue("r.yaml", 0, 0, "the file is empty")],
         "<environment>: TEMPO_BRIDGE_TEMPO__URL: bad\nr.yaml: the file is empty"),
    ],
)
def test_format_issues(issues: list[Issue], text: str) -> None:
    assert format_issues(issues) == text
