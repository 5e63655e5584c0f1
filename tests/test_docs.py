"""The docs hold working examples: ``docs/alerts.yaml`` passes the real promtool's check and its
 unit tests and reads only metrics the bridge exposes; ``docs/cost-alerts.yaml`` too, reading only
the default rules' metrics, with budgets and thresholds as recording rules rather than numbers in
the alerts; the operator guide's rule file is valid and its queries are TraceQL the Tempo double
runs; its ``/api/v1/status`` example has the API's fields."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from bridge.check import check
from bridge.metrics import Metrics
from bridge.rulefmt import load_rule_files
from bridge.statuspage import document
from tests.doubles.tempo import parse_metrics_query
from tests.support.promtool import promtool
from tests.support.status import NOW, hostile

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
COST_ALERTS = DOCS / "cost-alerts.yaml"
COST_ALERT_TESTS = ("cost-alerts.test.yaml", "cost-alerts-week.test.yaml")


def test_promtool_checks_the_rules() -> None:
    output = promtool("check", "rules", DOCS / "alerts.yaml")
    assert "SUCCESS: 8 rules found" in output


def test_promtool_unit_tests_pass() -> None:
    output = promtool("test", "rules", "alerts.test.yaml", cwd=DOCS)
    assert "SUCCESS" in output


def test_every_alert_has_a_unit_test() -> None:
    alerts = set(re.findall(r"(?m)^\s+- alert: (\w+)$", (DOCS / "alerts.yaml").read_text()))
    tested = set(re.findall(r"(?m)^\s+alertname: (\w+)$",
                            (DOCS / "alerts.test.yaml").read_text()))
    assert alerts == tested
    assert len(alerts) == 8


def test_alerts_read_only_metrics_the_bridge_exposes() -> None:
    families = list(Metrics().registry.collect())
    # a labelled metric has no sample before its first label set: names from the families
    exposed = {f"{f.name}_total" if f.type == "counter" else f.name for f in families}
    exposed |= {sample.name for f in families for sample in f.samples}
    used = set(re.findall(r"\btempo_bridge_\w+", (DOCS / "alerts.yaml").read_text()))
    assert used
    assert used <= exposed, used - exposed


def test_the_guides_rule_example_is_valid(tmp_path: Path) -> None:
    guide = (DOCS / "operator-guide.md").read_text()
    (example,) = [b for b in re.findall(r"```yaml\n(.*?)```", guide, re.S)
                  if b.startswith("groups:")]
    path = tmp_path / "rules.yaml"
    path.write_text(example)
    assert check(None, [path]) == []
    groups = load_rule_files([str(path)], min_query_offset=45)
    for group in groups:
        for rule in group.rules:
            parse_metrics_query(rule.expr)


# -- cost alerts ------------------------------------------------------------------------


def cost_rules() -> list[dict[str, Any]]:
    groups = YAML(typ="safe").load(COST_ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_checks_the_cost_rules() -> None:
    output = promtool("check", "rules", COST_ALERTS)
    assert f"SUCCESS: {len(cost_rules())} rules found" in output


def test_promtool_unit_tests_of_the_cost_rules_pass() -> None:
    output = promtool("test", "rules", *COST_ALERT_TESTS, cwd=DOCS)
    assert output.count("SUCCESS") == len(COST_ALERT_TESTS), output


def test_every_cost_alert_is_tested_firing_and_not_firing() -> None:
    alerts = {r["alert"] for r in cost_rules() if "alert" in r}
    fired: set[str] = set()
    silent: set[str] = set()
    for name in COST_ALERT_TESTS:
        for group in YAML(typ="safe").load((DOCS / name).read_text())["tests"]:
            for case in group.get("alert_rule_test", []):
                (fired if case["exp_alerts"] else silent).add(case["alertname"])
    assert fired == silent == alerts
    assert len(alerts) == 6


def test_cost_rules_read_only_what_the_default_rules_record() -> None:
    (group,) = load_rule_files([str(ROOT / "rules" / "openrouter.yaml")], min_query_offset=0)
    records = {rule.record for rule in group.rules}
    recorded_here = {r["record"] for r in cost_rules() if "record" in r}
    used = set()
    for rule in cost_rules():
        used |= set(re.findall(r"\b[a-z_:]+(?::[a-z_0-9]+|_total)\b", rule["expr"]))
    assert used - recorded_here <= records, used - recorded_here - records
    assert used & records == {"openrouter_cost_usd_total", "openrouter_requests_total"}


def test_cost_alerts_hold_no_numbers_only_durations() -> None:
    """Budgets and thresholds are recording rules an operator edits, not literals."""
    for rule in cost_rules():
        if "alert" not in rule:
            continue
        # the numbers of names, durations and template-free PromQL: none may remain
        text = re.sub(r"\b[a-z_:]+[a-z_:0-9]*\b|\b\d+[smhdwy]\b", "", rule["expr"])
        assert not re.search(r"\d", text), (rule["alert"], text)


def _paths(value: object, prefix: str = "") -> set[str]:
    """Every key path in a JSON value (list items merged: ``groups[].rules[].kind``); the
    keys of ``labels`` and ``queries`` are data, not fields."""
    if isinstance(value, dict):
        if prefix.endswith((".labels", ".queries")):
            return set()
        found = set()
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else key
            found |= {path} | _paths(item, path)
        return found
    if isinstance(value, list):
        return set().union(*(_paths(item, prefix + "[]") for item in value))
    return set()


def test_the_guides_status_json_example_has_every_field_of_the_api() -> None:
    guide = (DOCS / "operator-guide.md").read_text()
    (example,) = re.findall(r"```json\n(.*?)```", guide, re.S)
    shown = json.loads(example)
    assert _paths(shown) == _paths(document(hostile(), NOW))
    # and every top-level field is in the guide's table
    for field in shown:
        assert re.search(rf"^\| `{field}(\[\])?`|, `{field}`", guide, re.M), field
