"""Rule files and configs for tests: one group of rules, a config around it, and the shipped
default rules (``rules/openrouter.yaml``) on a faster schedule."""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from bridge.rulefmt import load_rule_files
from bridge.rules import Group

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RULES = ROOT / "rules" / "openrouter.yaml"
NOWHERE = "http://127.0.0.1:9/api/v1/write"
"""A receiver URL nobody listens on (the discard port): for daemons whose writes do not matter."""


# -- one group of rules ---------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One recording rule of a rule file."""

    record: str
    expr: str
    kind: str = "counter"


def rules_yaml(
    *rules: Rule,
    group: str = "g",
    interval: str = "1s",
    query_offset: str = "1s",
    settle: str | None = "[60s]",
    start: str | None = None,
    **more: str,
) -> str:
    """A rule file of one group, written as a person would (the group's name on line 2).

    ``settle`` and ``start`` are left out when None; ``more`` adds other group keys
    (``tenant="team-a"``), each value written as YAML as it is.
    """
    keys: dict[str, str | None] = {"interval": interval, "query_offset": query_offset,
                                   "settle": settle, "start": start, **more}
    lines = ["groups:", f"  - name: {group}"]
    lines += [f"    {key}: {value}" for key, value in keys.items() if value is not None]
    lines.append("    rules:" if rules else "    rules: []")
    for rule in rules:
        quoted = "'" + rule.expr.replace("'", "''") + "'"
        lines += [f"      - record: {rule.record}", f"        expr: {quoted}",
                  f"        kind: {rule.kind}"]
    return "\n".join(lines) + "\n"


def write_rules(path: Path, *rules: Rule, **group: Any) -> Path:
    """Write :func:`rules_yaml` (same arguments) to ``path``; returns ``path``."""
    path.write_text(rules_yaml(*rules, **group))
    return path


def load_group(path: Path, *rules: Rule, **group: Any) -> Group:
    """Write the rule file at ``path`` and load its one group (no minimum query offset)."""
    write_rules(path, *rules, **group)
    (loaded,) = load_rule_files([str(path)], min_query_offset=0)
    return loaded


# -- the default rules, faster ----------------------------------------------------------------


def default_rules(
    *, interval: int, query_offset: int, start: str | None = None,
    settle: Sequence[int] | None = None,
) -> str:
    """The shipped default rules with ``interval``-second windows read ``query_offset``
    seconds after they end; with ``start`` (a duration) a new rule begins that far back,
    with ``settle`` (seconds) its windows are read again at those ages, else the file's
    own settle ages stay. The expressions, labels and record names are unchanged."""
    text = DEFAULT_RULES.read_text()
    text = _set_key(text, "interval", f"{interval}s")
    offset = f"{query_offset}s" + (f"\n\\1start: {start}" if start is not None else "")
    text = _set_key(text, "query_offset", offset)
    if settle is not None:
        text = _set_key(text, "settle", "[" + ", ".join(f"{age}s" for age in settle) + "]")
    return text


def _set_key(text: str, key: str, value: str) -> str:
    """``text`` with the one line ``key: ...`` (any indentation) set to ``value``."""
    new, count = re.subn(rf"(?m)^(\s+){key}: .*$", rf"\1{key}: {value}", text)
    if count != 1:
        raise ValueError(f"{DEFAULT_RULES} has {count} '{key}:' lines, not 1")
    return new


# -- a config ---------------------------------------------------------------------------------


def write_config(
    directory: Path, tempo_url: str, write_url: str = NOWHERE, *, name: str = "bridge.yaml",
    **sections: Any,
) -> Path:
    """``directory/name`` (``bridge.yaml``), a config for a bridge under test; its path.

    By default: Tempo at ``tempo_url`` with no query end cutoff and no ingest delay (the
    Tempo double has neither unless told), the receiver at ``write_url``, the state in
    ``directory/state``, the rules in ``directory/rules.yaml``, the web server on a free
    port. Each of ``sections`` changes one top-level key: a mapping updates that section
    (a key set to None is left out, so the bridge's default applies), anything else
    replaces the key's value (None leaves it out).
    """
    config: dict[str, Any] = {
        "tempo": {"url": tempo_url, "query_end_cutoff": "0s", "ingest_delay": "0s"},
        "remote_write": {"url": write_url},
        "state_dir": "state",
        "rule_files": ["rules.yaml"],
        "web": {"listen_address": "127.0.0.1:0"},
    }
    for key, value in sections.items():
        if isinstance(value, Mapping) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    cleaned = {
        key: {k: v for k, v in value.items() if v is not None} if isinstance(value, dict)
        else value
        for key, value in config.items() if value is not None
    }
    out = io.StringIO()
    yaml = YAML()  # keeps the keys in the order above
    yaml.default_flow_style = False
    yaml.dump(cleaned, out)
    path = directory / name
    path.write_text(out.getvalue())
    return path
