"""Names: what makes a valid metric name, label name and Tempo tenant ID, and why one is not.

A leaf module: rule files and the config both check names against it, so neither imports
the other.
"""

from __future__ import annotations

import re

METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
"""Remote-write 1.0's metric names."""
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
"""Remote-write 1.0's label names."""
_TENANT_PART = re.compile(r"[a-zA-Z0-9!\-_.*'()]{1,150}")


def metric_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a metric name, or None when it can."""
    if METRIC_NAME.fullmatch(name):
        return None
    return (f"{name!r} is not a valid metric name "
            "(letters, digits, _ and :, not starting with a digit)")


def label_name_problem(name: str, *, reserved_allowed: bool = False) -> str | None:
    """Why ``name`` cannot be a label name, or None when it can.

    Names starting with ``__`` are reserved; ``reserved_allowed`` accepts them but ``__name__``
    (external labels such as Mimir's ``__replica__`` need that).
    """
    if not LABEL_NAME.fullmatch(name):
        return (f"{name!r} is not a valid label name "
                "(letters, digits and _, not starting with a digit)")
    if name == "__name__" and reserved_allowed:
        return "__name__ is the metric name, not a label to set"
    if name.startswith("__") and not reserved_allowed:
        return f"{name!r} is not a valid label name: names starting with __ are reserved"
    return None


def tenant_problem(tenant: str) -> str | None:
    """Why ``tenant`` cannot be a Tempo tenant ID (X-Scope-OrgID), or None when it can."""
    for part in tenant.split("|"):
        if not _TENANT_PART.fullmatch(part) or part in (".", ".."):
            return (
                f"{tenant!r} is not a valid tenant ID: use 1 to 150 letters, digits or "
                "!-_.*'() (and | between tenants)"
            )
    return None
