"""Command line: ``tempo-bridge run | check | eval``."""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from bridge import __version__
from bridge.check import check, format_issues
from bridge.config import Config, load_config
from bridge.daemon import Daemon, load_rules
from bridge.durations import parse_duration
from bridge.engine import dry_run
from bridge.errors import BridgeError
from bridge.evaluation import Sample
from bridge.logs import configure
from bridge.remote_write import is_stale_nan
from bridge.rules import Group
from bridge.tempo import TempoClient

DEFAULT_CONFIG = Path("/etc/tempo-bridge/bridge.yaml")


def parse_time(text: str, now: float | None = None) -> float:
    """Unix seconds, RFC 3339, ``now``, or a duration back from now (``2h``)."""
    now = time.time() if now is None else now
    if text == "now":
        return now
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        pass
    try:
        return now - parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: give unix seconds, RFC 3339, 'now' or a duration"
        ) from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tempo-bridge",
        description="Evaluate TraceQL metrics recording rules against Tempo and write "
        "the results to Prometheus by remote write.",
    )
    parser.add_argument("--version", action="version", version=f"tempo-bridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="config file")

    chk = sub.add_parser("check", help="validate a config file and/or rule files")
    chk.add_argument("--config", type=Path, help="config file (its rule files are checked too)")
    chk.add_argument("rule_files", nargs="*", type=Path, help="rule files")

    ev = sub.add_parser("eval", help="print the samples rules would write, writing nothing")
    ev.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="config file")
    ev.add_argument("--from", dest="start", default="1h", help="start (default 1h ago)")
    ev.add_argument("--to", dest="end", default="now", help="end (default now)")
    ev.add_argument("--rule", action="append", help="only this record name (repeatable)")
    ev.add_argument("--format", choices=["table", "openmetrics"], default="table")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "check":
            return _check(args.config, args.rule_files)
        config = load_config(args.config)
        configure(config.log_level, stream=sys.stderr if args.command == "eval" else None)
        groups = load_rules(config)
        if args.command == "run":
            asyncio.run(Daemon(args.config, config, groups).run())
            return 0
        start, end = parse_time(args.start), parse_time(args.end)
        asyncio.run(_eval(config, groups, start, end, args.rule, args.format, sys.stdout))
        return 0
    except BridgeError as exc:
        print(f"tempo-bridge: {exc}", file=sys.stderr)
        return 1
    except argparse.ArgumentTypeError as exc:
        print(f"tempo-bridge: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _check(config: Path | None, rule_files: list[Path]) -> int:
    if config is None and not rule_files:
        print("tempo-bridge check: give --config and/or rule files", file=sys.stderr)
        return 2
    issues = check(config, rule_files)
    if issues:
        print(format_issues(issues), file=sys.stderr)
        return 1
    print("SUCCESS: no problems found")
    return 0


async def _eval(
    config: Config,
    groups: list[Group],
    start: float,
    end: float,
    only: list[str] | None,
    fmt: str,
    out: TextIO,
) -> None:
    tempo = TempoClient(
        config.tempo.url,
        tenant=config.tempo.tenant,
        headers=config.tempo.auth_headers(),
        timeout=config.tempo.timeout,
    )
    families: list[tuple[str, str, list[Sample]]] = []
    try:
        for group in groups:
            for rule in group.rules:
                if only and rule.record not in only:
                    continue
                samples = await dry_run(
                    tempo, group, rule, start, end, int(config.tempo.max_duration)
                )
                families.append((rule.record, rule.kind, samples))
    finally:
        await tempo.aclose()
    out.write(format_openmetrics(families) if fmt == "openmetrics" else format_table(families))


def format_value(value: float) -> str:
    """A sample value as Prometheus writes it (``stale`` for a stale marker)."""
    if is_stale_nan(value):
        return "stale"
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def format_table(families: Sequence[tuple[str, str, Sequence[Sample]]]) -> str:
    """One line per sample: time (RFC 3339), value, series."""
    lines = []
    for _record, _kind, samples in families:
        for labels, ts_ms, value in samples:
            when = datetime.fromtimestamp(ts_ms / 1000, UTC).isoformat().replace("+00:00", "Z")
            lines.append(f"{when}  {format_value(value):>22}  {_series_name(labels)}")
    return "\n".join(lines) + ("\n" if lines else "")


def format_openmetrics(families: Sequence[tuple[str, str, Sequence[Sample]]]) -> str:
    """OpenMetrics text for ``promtool tsdb create-blocks-from openmetrics``.

    A counter rule named ``x_total`` is family ``x`` of type counter; other names are
    declared ``unknown`` (counter) or ``gauge``. Stale markers have no text form and are
    left out. Families are merged by name, each written once, samples in time order.
    """
    merged: dict[str, tuple[str, list[Sample]]] = {}
    for record, kind, samples in families:
        merged.setdefault(record, (kind, []))[1].extend(samples)
    lines = []
    for record, (kind, samples) in merged.items():
        if kind == "counter":
            family, kind_text = (record[:-6], "counter") if record.endswith("_total") else (
                record, "unknown")
        else:
            family, kind_text = record, "gauge"
        lines.append(f"# TYPE {family} {kind_text}")
        for labels, ts_ms, value in sorted(samples, key=lambda s: (s[0], s[1])):
            if is_stale_nan(value):
                continue
            lines.append(f"{_series_name(labels)} {format_value(value)} {ts_ms / 1000:.3f}")
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def _series_name(labels: Sequence[tuple[str, str]]) -> str:
    name = dict(labels).get("__name__", "")
    rest = ",".join(f'{k}="{_escape(v)}"' for k, v in labels if k != "__name__")
    return f"{name}{{{rest}}}" if rest else name


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
