"""Names: metric names, label names and tenant IDs, and the reason one is refused."""

from __future__ import annotations

import pytest

from bridge.names import label_name_problem, metric_name_problem, tenant_problem


@pytest.mark.parametrize("name", ["a", "cost_usd_total", "job:cost:rate5m", "_x", "__x"])
def test_valid_metric_names(name: str) -> None:
    assert metric_name_problem(name) is None


@pytest.mark.parametrize("name", ["", "1x", "cost usd", "cost-usd", "é"])
def test_invalid_metric_names(name: str) -> None:
    assert metric_name_problem(name) == (
        f"{name!r} is not a valid metric name "
        "(letters, digits, _ and :, not starting with a digit)")


@pytest.mark.parametrize(
    ("name", "reserved_allowed", "problem"),
    [
        ("model", False, None),
        ("_model", False, None),
        ("job:x", False, "'job:x' is not a valid label name "
                         "(letters, digits and _, not starting with a digit)"),
        ("0zone", True, "'0zone' is not a valid label name "
                        "(letters, digits and _, not starting with a digit)"),
        ("__replica__", False,
         "'__replica__' is not a valid label name: names starting with __ are reserved"),
        ("__replica__", True, None),
        ("__name__", True, "__name__ is the metric name, not a label to set"),
    ],
)
def test_label_names(name: str, reserved_allowed: bool, problem: str | None) -> None:
    assert label_name_problem(name, reserved_allowed=reserved_allowed) == problem


@pytest.mark.parametrize("tenant", ["single-tenant", "team-a|team-b", "a.b*c!(d)'e", "x" * 150])
def test_valid_tenants(tenant: str) -> None:
    assert tenant_problem(tenant) is None


@pytest.mark.parametrize("tenant", ["", "a b", "a|", ".", "..", "x" * 151, "a/b"])
def test_invalid_tenants(tenant: str) -> None:
    assert tenant_problem(tenant) == (
        f"{tenant!r} is not a valid tenant ID: use 1 to 150 letters, digits or "
        "!-_.*'() (and | between tenants)")
