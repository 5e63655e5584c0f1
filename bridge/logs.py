"""Logs: structlog configured to write one JSON object per event to stdout (journald).

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
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            SyslogPrefixRenderer(renderer) if syslog_prefix else renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
