"""Grafana dashboards as Grafana runs them: loading, layout checks, variable substitution
and comparing a target's results with the values a test expects.

Shared by the tests of ``dashboards/*.json`` (``tests/test_dashboard.py`` and
``tests/test_bridge_dashboard.py``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any, TypeVar

K = TypeVar("K", bound=Hashable)

PROMETHEUS = {"type": "prometheus", "uid": "${datasource}"}
"""A panel's or target's data source: the dashboard's ``datasource`` variable, never a uid."""


def load_dashboard(path: Path) -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(path.read_text())
    return dashboard


def assert_canonical_json(path: Path) -> None:
    """The file is JSON as ``json.dumps(indent=2)`` writes it, so that a dashboard exported
    from Grafana and re-indented, or edited by a script, differs only where it changed."""
    text = path.read_text()
    assert text == json.dumps(json.loads(text), indent=2, ensure_ascii=False) + "\n", path


def query_panels(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The panels that run queries: all but rows."""
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def assert_layout(dashboard: Mapping[str, Any]) -> None:
    """Unique panel ids; every panel inside the 24 columns; no two panels overlap."""
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "two panels share an id"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & area, f"{panel['title']} overlaps another panel"
        cells |= area


def assert_no_datasource_uid(dashboard: Mapping[str, Any]) -> None:
    """No data source is named by a uid of one Grafana: every reference is a variable
    (``${datasource}``) or Grafana's built-in annotation source."""
    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            source = node.get("datasource")
            if isinstance(source, dict) and "uid" in source:
                uid = source["uid"]
                assert uid.startswith("${") or uid == "-- Grafana --", f"{where}: uid {uid!r}"
            for key, value in node.items():
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")
    walk(dict(dashboard), "dashboard")


def grafana_regex_escape(value: str) -> str:
    """A selected value as Grafana's Prometheus data source writes it into ``=~"..."``."""
    return re.sub(r"[$^*{}\[\]'+?.()|\\]", lambda m: "\\\\" + m.group(), value)


def substitute(
    expr: str, variables: Mapping[str, str | None], durations: Mapping[str, str]
) -> str:
    """``expr`` as Grafana sends it: each of ``variables`` as the regex-escaped selected
    value, or ``.*`` (the dashboards' All value) for ``None``; ``durations`` gives
    ``$__range``, ``$__interval`` and ``$__rate_interval`` (``{"__range": "60s"}``)."""
    text = expr
    for name, selected in variables.items():
        value = ".*" if selected is None else grafana_regex_escape(selected)
        text = re.sub(rf"\$\{{{name}\}}|\${name}\b", value.replace("\\", "\\\\"), text)
    for name, duration in durations.items():
        text = re.sub(rf"\${name}\b", duration, text)
    assert "$" not in text, f"a variable the test does not know: {text}"
    return text


def values_of(items: list[dict[str, Any]], label: str | None) -> dict[str | None, float]:
    """An instant query's result by the value of ``label`` (``None``: a single result)."""
    result: dict[str | None, float] = {}
    for item in items:
        group = None if label is None else item["metric"].get(label)
        assert group not in result, f"two results for {group!r}: {items}"
        result[group] = float(item["value"][1])
    return result


def assert_values(got: Mapping[K, float], want: Mapping[K, float], exact: bool,
                  where: str) -> None:
    """``got`` holds a result for every non-zero expected one, and each result equals
    its expected value (a missing one counting as 0): exactly, or within 1e-9 relative."""
    missing = {k for k, v in want.items() if v} - got.keys()
    assert not missing, f"{where}: no result for {missing}"
    for group in got.keys() | want.keys():
        value, expect = got.get(group, 0.0), want.get(group, 0.0)
        if exact:
            assert value == expect, f"{where} {group!r}: {value} != {expect}"
        else:
            assert math.isclose(value, expect, rel_tol=1e-9, abs_tol=1e-12), (
                f"{where} {group!r}: {value} != {expect}")
