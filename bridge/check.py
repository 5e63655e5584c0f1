"""``tempo-bridge check``: validate a config file and rule files, and format what is wrong."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from bridge.config import TempoConfig, load_config
from bridge.errors import ConfigError, Issue
from bridge.rulefmt import check_rule_files, expand_rule_files


def check(config_path: Path | None, rule_paths: Sequence[Path]) -> list[Issue]:
    """Every issue in the config (with its rule_files) and in the rule files ``rule_paths``.

    Without a config, or when the config itself is invalid, rule files are checked against the
    default Tempo settings (a query_offset of at least 45 s). Empty when all is well.
    """
    issues: list[Issue] = []
    paths = list(rule_paths)
    min_query_offset = TempoConfig().min_query_offset
    if config_path is not None:
        try:
            config = load_config(config_path)
        except ConfigError as exc:
            issues.extend(exc.issues)
        else:
            min_query_offset = config.tempo.min_query_offset
            paths = expand_rule_files(config.rule_files) + paths
    issues.extend(check_rule_files(paths, min_query_offset=min_query_offset))
    return sorted(issues)


def format_issues(issues: Iterable[Issue]) -> str:
    """One line per issue, ``file:line:col: message``; just ``file: message`` for a whole file."""
    return "\n".join(str(i) for i in sorted(issues))
