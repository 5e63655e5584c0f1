"""Command line: ``tempo-bridge run | check | eval | backfill | doctor``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn, TextIO

from bridge import __version__
from bridge.backfill import backfill, evaluate_range
from bridge.check import check, format_issues
from bridge.components import limits, load_rules, tempo_client
from bridge.config import Config, load_config
from bridge.daemon import Daemon
from bridge.doctor import DEFAULT_LONGEST_REQUEST, diagnose, format_report, problems
from bridge.durations import parse_duration
from bridge.errors import BridgeError
from bridge.logs import configure
from bridge.openmetrics import Family, format_openmetrics, format_value, series_name
from bridge.rules import Group
from bridge.series import EXEMPLAR_LABEL

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

    bf = sub.add_parser(
        "backfill",
        help="write OpenMetrics of a past range for promtool tsdb create-blocks-from openmetrics",
    )
    bf.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="config file")
    bf.add_argument("--from", dest="start", required=True, help="start of the range")
    bf.add_argument("--to", dest="end", required=True, help="end of the range")
    bf.add_argument("--out", type=Path, required=True, help="OpenMetrics file to write")
    bf.add_argument("--rule", action="append", help="only this record name (repeatable)")
    bf.add_argument(
        "--seed-state", action="store_true",
        help="store the final totals in the state, so the daemon continues these counters",
    )

    doc = sub.add_parser(
        "doctor",
        help="reach Tempo and the receiver, read the state, and warn about what would lose data",
    )
    doc.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="config file")
    doc.add_argument(
        "--longest-request", type=_duration, default=DEFAULT_LONGEST_REQUEST, metavar="DURATION",
        help="the longest time from a request's start until its span reaches Tempo "
        "(default 10m): Tempo's ingestion time range slack must be at least that",
    )
    return parser


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def entry() -> NoReturn:
    """The ``tempo-bridge`` command: :func:`main`, then the process ends at once.

    Once ``main`` has returned, everything that matters is closed (the state, the
    connections) and what is printed is flushed here. Python's own exit would then wait
    for work abandoned on the worker threads (a step of an evaluation the stop
    cancelled, whose result is dropped) and free the heap object by object: a stop
    under systemd took 5 to 13 s with a rule of a million series, 0.7 to 0.9 s since.
    """
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "check":
            return _check(args.config, args.rule_files)
        config = load_config(args.config)
        to_stderr = args.command in ("eval", "backfill", "doctor")
        configure(config.log_level, stream=sys.stderr if to_stderr else None)
        groups = load_rules(config)
        if args.command == "run":
            asyncio.run(Daemon(args.config, config, groups).run())
            return 0
        if args.command == "doctor":
            findings = asyncio.run(
                diagnose(config, groups, longest_request=args.longest_request)
            )
            print(format_report(findings), end="")
            return 1 if problems(findings) else 0
        start, end = parse_time(args.start), parse_time(args.end)
        if args.command == "backfill":
            return _backfill(config, groups, start, end, args.rule, args.out, args.seed_state)
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
    tempo = tempo_client(config)
    try:
        families = await evaluate_range(
            tempo, groups, start, end, only, limits(config), now=time.time()
        )
    finally:
        await tempo.aclose()
    out.write(format_openmetrics(families) if fmt == "openmetrics" else format_table(families))


def _backfill(
    config: Config,
    groups: list[Group],
    start: float,
    end: float,
    only: list[str] | None,
    out: Path,
    seed_state: bool,
) -> int:
    summary = asyncio.run(
        backfill(config, groups, start, end, only, out, seed_state=seed_state)
    )
    for note in summary.notes:
        print(f"tempo-bridge backfill: note: {note}", file=sys.stderr)
    span = ""
    if summary.first_ms is not None and summary.last_ms is not None:
        span = f" from {_rfc3339(summary.first_ms)} to {_rfc3339(summary.last_ms)}"
    print(
        f"wrote {summary.samples} samples of {summary.series} series ({summary.families} rules)"
        f"{span} to {out}\nmake blocks with: promtool tsdb create-blocks-from openmetrics "
        f"{out} DATA_DIR",
        file=sys.stderr,
    )
    return 0


def _rfc3339(ts_ms: int) -> str:
    """A time in RFC 3339, UTC, to the millisecond when it is not a whole second."""
    moment = datetime.fromtimestamp(ts_ms / 1000, UTC)
    text = moment.isoformat(timespec="milliseconds" if ts_ms % 1000 else "seconds")
    return text.replace("+00:00", "Z")


def format_table(families: Sequence[Family]) -> str:
    """One line per sample: time (RFC 3339), value, series; under it, one line per
    exemplar: its trace ID, its value and its span's start."""
    lines = []
    indent = " " * 46
    for family in families:
        for labels, ts_ms, value in family.samples:
            lines.append(f"{_rfc3339(ts_ms)}  {format_value(value):>22}  {series_name(labels)}")
            for exemplar in family.exemplars.get((labels, ts_ms), ()):
                lines.append(f'{indent}# {{{EXEMPLAR_LABEL}="{exemplar.trace_id}"}} '
                             f"{format_value(exemplar.value)} {_rfc3339(exemplar.ts_ms)}")
    return "\n".join(lines) + ("\n" if lines else "")
