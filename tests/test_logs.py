"""Logs: JSON lines, and the syslog priority prefix when stdout is journald's stream."""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path
from typing import TextIO

import pytest
import structlog

from bridge.logs import SyslogPrefixRenderer, configure, writes_to_journal


def journal_stream_of(stream: TextIO) -> str:
    """``$JOURNAL_STREAM`` as systemd sets it for ``stream``: ``device:inode``."""
    stat = os.fstat(stream.fileno())
    return f"{stat.st_dev}:{stat.st_ino}"


def log_every_level() -> None:
    log = structlog.get_logger("test")
    log.debug("d", n=1)
    log.info("i")
    log.warning("w")
    log.error("e")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("x")
    log.critical("c")


def test_prefixes_each_line_with_its_syslog_priority_on_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (tmp_path / "out").open("w+") as stream:
        monkeypatch.setenv("JOURNAL_STREAM", journal_stream_of(stream))
        configure("debug", stream=stream)
        log_every_level()
        stream.seek(0)
        lines = stream.read().splitlines()
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>", "<3>", "<2>"]
    events = [json.loads(line[3:]) for line in lines]
    assert [e["event"] for e in events] == ["d", "i", "w", "e", "x", "c"]
    assert [e["level"] for e in events] == ["debug", "info", "warning", "error", "error",
                                            "critical"]
    assert events[0]["n"] == 1
    assert "ValueError: boom" in events[4]["exception"]  # the traceback stays in one line


def test_no_prefix_when_the_journal_stream_is_another_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (tmp_path / "other").open("w") as other, (tmp_path / "out").open("w+") as stream:
        monkeypatch.setenv("JOURNAL_STREAM", journal_stream_of(other))
        configure("info", stream=stream)
        structlog.get_logger("test").error("e")
        stream.seek(0)
        line = stream.read()
    assert json.loads(line)["event"] == "e"


def test_no_prefix_without_journal_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    with (tmp_path / "out").open("w+") as stream:
        configure("info", stream=stream)
        structlog.get_logger("test").warning("w")
        stream.seek(0)
        assert stream.read().startswith("{")


def test_prefix_can_be_forced_either_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = io.StringIO()
    configure("info", stream=buffer, syslog_prefix=True)
    structlog.get_logger("test").warning("w")
    assert buffer.getvalue().startswith("<4>{")
    with (tmp_path / "out").open("w+") as stream:
        monkeypatch.setenv("JOURNAL_STREAM", journal_stream_of(stream))
        configure("info", stream=stream, syslog_prefix=False)
        structlog.get_logger("test").warning("w")
        stream.seek(0)
        assert stream.read().startswith("{")


def test_writes_to_journal(tmp_path: Path) -> None:
    with (tmp_path / "out").open("w") as stream:
        assert writes_to_journal(stream, {"JOURNAL_STREAM": journal_stream_of(stream)})
        assert not writes_to_journal(stream, {})
        assert not writes_to_journal(stream, {"JOURNAL_STREAM": "garbage"})
        assert not writes_to_journal(stream, {"JOURNAL_STREAM": "1:2"})
    assert not writes_to_journal(io.StringIO(), {"JOURNAL_STREAM": "1:2"})  # no descriptor


def test_renderer_levels_without_add_log_level() -> None:
    render = SyslogPrefixRenderer(structlog.processors.JSONRenderer())
    assert render(None, "warning", {"event": "w"}) == '<4>{"event": "w"}'
    assert render(None, "msg", {"event": "m"}) == '<6>{"event": "m"}'  # unknown: info


def test_libraries_log_through_the_same_json_lines(tmp_path: Path) -> None:
    """What APScheduler, httpx or asyncio log through ``logging``, from warnings up, is a
    JSON line like the bridge's own, with its priority and the logger's name; below
    warnings (httpx logs every request at info) nothing, whatever the bridge's level."""
    with (tmp_path / "out").open("w+") as stream:
        configure("debug", stream=stream, syslog_prefix=True)
        configure("debug", stream=stream, syslog_prefix=True)  # again (a reload): one handler
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("apscheduler.executors.default").exception(
                "Job %s raised an exception", "group g")
        logging.getLogger("asyncio").warning("slow callback")
        logging.getLogger("httpx").info("HTTP Request: GET http://tempo")
        stream.seek(0)
        lines = stream.read().splitlines()
    assert [line[:3] for line in lines] == ["<3>", "<4>"]
    error, warning = (json.loads(line[3:]) for line in lines)
    assert (error["event"], error["level"], error["logger"]) == (
        "Job group g raised an exception", "error", "apscheduler.executors.default")
    assert "ValueError: boom" in error["exception"]
    assert (warning["event"], warning["level"], warning["logger"]) == (
        "slow callback", "warning", "asyncio")
    assert "timestamp" in warning
