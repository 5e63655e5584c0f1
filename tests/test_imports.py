"""Imports point down the data flow: leaf modules import nothing of the bridge, the rule
model knows no YAML, and the config and the rule files do not import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BRIDGE = Path(__file__).resolve().parent.parent / "bridge"


def imports(module: str) -> set[str]:
    """The top-level names of the modules ``bridge/<module>.py`` imports ("bridge.rules")."""
    tree = ast.parse((BRIDGE / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == "bridge":
                found.update(f"bridge.{alias.name}" for alias in node.names)
    return found


def bridge_imports(module: str) -> set[str]:
    return {name for name in imports(module) if name.startswith("bridge.")}


@pytest.mark.parametrize("leaf", ["series", "errors", "durations", "redact", "names"])
def test_leaf_modules_import_nothing_of_the_bridge(leaf: str) -> None:
    assert bridge_imports(leaf) == set()


def test_the_rule_model_knows_no_yaml_nor_its_file_format() -> None:
    found = imports("rules")
    assert not {name for name in found if name.startswith("ruamel")}
    assert bridge_imports("rules") == set()


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("config", {"bridge.rules", "bridge.rulefmt", "bridge.traceql"}),
        ("rulefmt", {"bridge.config"}),
        ("yamlfile", {"bridge.rules", "bridge.rulefmt", "bridge.config"}),
    ],
)
def test_config_and_rule_files_do_not_import_each_other(module: str, forbidden: set[str]) -> None:
    assert not bridge_imports(module) & forbidden


def test_the_tests_import_neither_the_benchmarks_nor_the_reliability_harness() -> None:
    """bench/ and reliability/ use the tests' doubles and helpers; the tests run them as
    programs, so that there is no import cycle between them."""
    tests = Path(__file__).resolve().parent
    found = []
    for path in sorted(tests.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module
                     else [])
            found += [f"{path.relative_to(tests)}: {name}" for name in names
                      if name.split(".")[0] in ("bench", "reliability")]
    assert found == []


def test_the_status_page_renders_the_status_board_and_nothing_else() -> None:
    """It reads a snapshot; it does not reach into the state, the engine or the daemon."""
    assert bridge_imports("statuspage") == {"bridge.status", "bridge.durations"}
    assert bridge_imports("status") == set()
