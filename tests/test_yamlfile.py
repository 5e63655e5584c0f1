"""YAML documents: walking a parsed document by key path."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.yamlfile import lookup

DOCUMENT: dict[str, Any] = {
    "query_frontend": {"metrics": {"max_duration": "24h0m0s", "max_exemplars": 0}},
    "groups": [{"name": "a", "settle": ["10m", "1h"]}],
    "empty": None,
}


@pytest.mark.parametrize(
    ("path", "found"),
    [
        ((), (True, DOCUMENT)),
        (("query_frontend", "metrics", "max_duration"), (True, "24h0m0s")),
        (("query_frontend", "metrics", "max_exemplars"), (True, 0)),
        (("groups", 0, "settle", 1), (True, "1h")),
        (("empty",), (True, None)),  # a key set to null is found
        (("empty", "x"), (False, None)),
        (("query_frontend", "metrics", "max_intervals"), (False, None)),
        (("groups", 1), (False, None)),
        (("groups", -1), (False, None)),
        (("groups", "0"), (False, None)),  # a list is indexed by numbers only
        (("groups", True), (False, None)),
        (("query_frontend", "metrics", "max_duration", "x"), (False, None)),
    ],
)
def test_lookup(path: tuple[str | int, ...], found: tuple[bool, Any]) -> None:
    assert lookup(DOCUMENT, path) == found
