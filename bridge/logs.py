"""Logs: structlog configured to write one JSON object per event to stdout (journald).

What the libraries log through the standard ``logging`` module (APScheduler, httpx,
asyncio), from warnings up, is written the same way, with the logger's name, rather
than as Python's bare text on stderr.

When stdout is journald's stream (``$JOURNAL_STREAM`` names its device and inode), each
line starts with its syslog priority, ``<3>`` for errors to ``<7>`` for debug, which
journald strips and stores (systemd's ``SyslogLevelPrefix=``, on by default), so that
``journalctl -p err`` shows the errors.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

import structlog
from structlog.typing import EventDict, WrappedLogger

#: Syslog priority of each structlog level (RFC 5424 severities).
SYSLOG_PRIORITY: Mapping[str, int] = {
    "critical": 2, "exception": 3, "error": 3, "warning": 4, "warn": 4,
    "notice": 5, "info": 6, "debug": 7,
}


def writes_to_journal(stream: TextIO, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``stream`` is the journal stream systemd set up (``$JOURNAL_STREAM=dev:inode``)."""
    device, colon, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    if not colon or not device.isdigit() or not inode.isdigit():
        return False
    try:
        stat = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # closed, or no file descriptor (tests)
        return False
    return stat.st_dev == int(device) and stat.st_ino == int(inode)


class SyslogPrefixRenderer:
    """Renders with ``renderer`` and prefixes the line with ``<priority>`` from its level."""

    def __init__(self, renderer: structlog.processors.JSONRenderer) -> None:
        self._renderer = renderer

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> str:
        level = str(event_dict.get("level", method_name)).lower()
        priority = SYSLOG_PRIORITY.get(level, SYSLOG_PRIORITY["info"])
        line = self._renderer(logger, method_name, event_dict)
        text = line.decode() if isinstance(line, bytes) else line
        return f"<{priority}>{text}"


def configure(
    level: str = "info", stream: TextIO | None = None, *, syslog_prefix: bool | None = None
) -> None:
    """JSON lines with ISO timestamps and a level, filtered at ``level``.

    ``syslog_prefix`` puts the ``<priority>`` before each line; by default it is on when
    the stream is journald's.
    """
    out = stream or sys.stdout
    renderer = structlog.processors.JSONRenderer(sort_keys=False)
    if syslog_prefix is None:
        syslog_prefix = writes_to_journal(out)
    render = SyslogPrefixRenderer(renderer) if syslog_prefix else renderer
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    threshold = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            structlog.processors.format_exc_info,
            render,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    _route_standard_logging(out, max(threshold, logging.WARNING), timestamper, render)


class _LibraryHandler(logging.StreamHandler[TextIO]):
    """The root logger's handler that :func:`configure` installs (and replaces)."""


def _route_standard_logging(
    out: TextIO, threshold: int, timestamper: structlog.typing.Processor,
    render: structlog.typing.Processor,
) -> None:
    """Records of the ``logging`` module at ``threshold`` and above, as JSON lines."""
    handler = _LibraryHandler(out)
    handler.setLevel(threshold)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name,
                           timestamper],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, render],
    ))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _LibraryHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
