"""Recording rules: the model (a Group of Rules) and how a rule maps Tempo's labels.

Reading and checking rule files is :mod:`bridge.rulefmt`'s job; this module knows nothing
of YAML, as Prometheus keeps ``model/rulefmt`` apart from ``rules/``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

SCOPES = ("span.", "resource.", "event.", "link.", "instrumentation.", ".")
# Attributes holding prompt and completion text: never labels (privacy and cardinality).
CONTENT_ATTRIBUTES = (
    "gen_ai.prompt", "gen_ai.completion",
    "gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions",
)

DEFAULT_IDLE_AFTER = 3600
"""A counter series that has not grown for an hour stops being written (0: never)."""
DEFAULT_EXEMPLARS = True
DEFAULT_EXEMPLARS_PER_SERIES = 1

_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True)
class Rule:
    """One recording rule: a TraceQL metrics query whose result is recorded as ``record``.

    Rules (and groups) are equal when they are defined alike, wherever they are written:
    ``file`` and ``line`` take no part in equality or hashing.
    """

    record: str
    expr: str  # whitespace outside string literals collapsed to single spaces
    kind: Literal["counter", "gauge"]
    labels: Mapping[str, str] = field(hash=False)
    rename: Mapping[str, str] = field(hash=False)
    limit: int  # 0 = no limit
    missing_value: str | None  # None: a "nil" label from Tempo is left out
    by: tuple[str, ...]  # by() attributes as written
    # Where the rule is written: not part of what it is (moving it changes nothing).
    file: str = field(compare=False)
    line: int = field(compare=False)

    def by_labels(self) -> dict[str, str]:
        """The output label of each by() attribute (label -> attribute), renamed."""
        return by_labels(self.by, self.rename)

    def map_labels(
        self, tempo_labels: Mapping[str, str], group_labels: Mapping[str, str] = _EMPTY
    ) -> dict[str, str]:
        """The output labels of one Tempo series.

        Attribute names become label names (``label_name_for``, then ``rename``); Tempo's
        "nil" (or a by() attribute it left out) and an empty value (which Prometheus
        treats as no label) become ``missing_value`` or no label; then the group's
        labels, then the rule's labels override; ``__name__`` is the record name.
        """
        out: dict[str, str] = {}
        if self.missing_value is not None:
            # Tempo leaves out a by() attribute a span lacks (and says "nil" only when it
            # lacks them all): every by() label gets missing_value where it is absent.
            tempo_labels = {**dict.fromkeys(self.by, "nil"), **tempo_labels}
        for key, value in tempo_labels.items():
            if key == "__name__":
                continue
            name = label_name_for(key)
            name = self.rename.get(name, name)
            if value == "nil" or not value:  # missing, or empty: no label in Prometheus
                if self.missing_value is None:
                    continue
                value = self.missing_value
            out[name] = value
        out.update(group_labels)
        out.update(self.labels)
        out["__name__"] = self.record
        return out


@dataclass(frozen=True)
class Group:
    """Rules evaluated together over the same windows; times in whole seconds."""

    name: str
    interval: int
    query_offset: int
    tenant: str | None  # X-Scope-OrgID; None: the one in the config
    start: int  # seconds back from now where a rule with no state begins; 0 = now
    settle: tuple[int, ...]  # window ages at which windows are read again
    labels: Mapping[str, str] = field(hash=False)
    rules: tuple[Rule, ...]
    # Where the group is written: not part of what it is (moving it reschedules nothing).
    file: str = field(compare=False)
    line: int = field(compare=False)
    # A counter series that has not grown for this long is no longer written (it keeps its
    # total and continues from it when it grows again); 0 = written at every window end.
    idle_after: int = DEFAULT_IDLE_AFTER
    exemplars: bool = DEFAULT_EXEMPLARS  # samples carry exemplars (trace IDs) from Tempo
    exemplars_per_series: int = DEFAULT_EXEMPLARS_PER_SERIES  # at most, per series and window


@functools.lru_cache(maxsize=4096)
def label_name_for(attribute: str) -> str:
    """Prometheus label name for a TraceQL attribute ("span.gen_ai.request.model" ->
    "gen_ai_request_model"): scope stripped, other characters replaced by "_"."""
    name = _strip_scope(attribute)
    name = re.sub(r"[^a-zA-Z0-9_]", "_", name)
    if name[:1].isdigit():
        name = "_" + name
    return name


def by_labels(by: tuple[str, ...], rename: Mapping[str, str]) -> dict[str, str]:
    """The output label of each by() attribute in ``by`` (label -> attribute): its
    :func:`label_name_for`, then ``rename``; an attribute whose label another took is left
    out (rule files refuse such collisions)."""
    out: dict[str, str] = {}
    for attribute in by:
        name = label_name_for(attribute)
        out.setdefault(rename.get(name, name), attribute)
    return out


def _strip_scope(attribute: str) -> str:
    for scope in SCOPES:
        if attribute.startswith(scope):
            return attribute[len(scope):]
    return attribute


def content_attribute(attribute: str) -> str | None:
    """The content attribute (gen_ai.prompt ...) that ``attribute`` names, or None."""
    name = _strip_scope(attribute).replace('"', "")
    for content in CONTENT_ATTRIBUTES:
        if name == content or name.startswith(content + "."):
            return content
    return None
