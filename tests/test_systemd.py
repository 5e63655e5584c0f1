"""systemd: the unit file, and the sd_notify protocol as the real daemon speaks it.

The unit must pass ``systemd-analyze verify`` without a word and rate 1.5 or lower in
``systemd-analyze security``. The daemon is run in-process (to block its event loop on
purpose) and as a child process under the unit's ``MemoryDenyWriteExecute=`` filter (to
send it real signals), talking to a datagram socket of the test as ``$NOTIFY_SOCKET``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bridge.systemd import Notifier, monotonic_usec, socket_address, watchdog_interval
from tests.doubles.tempo import TempoDouble
from tests.support import mdwe
from tests.support.daemon import make_daemon, running
from tests.support.files import Rule, write_rules
from tests.support.files import write_config as write_bridge_config
from tests.support.servers import eventually, free_port, receiving, serving

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "tempo-bridge.service"
INSTALLED_BINARY = "/usr/bin/tempo-bridge"
MAX_EXPOSURE = 1.5


# -- the unit file ----------------------------------------------------------------------------


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail("systemd-analyze not found: install Debian's systemd package "
                    "(scripts/test does)")
    return found


def test_unit_verifies_without_a_word(tmp_path: Path) -> None:
    # verify insists that ExecStart's program exists. The unit names where the package
    # installs it, which a test machine lacks, so verify a copy naming this venv's script.
    text = UNIT.read_text()
    assert f"ExecStart={INSTALLED_BINARY} run " in text
    script = Path(sys.executable).parent / "tempo-bridge"
    assert script.is_file(), "uv sync installs the tempo-bridge script into the venv"
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(f"ExecStart={INSTALLED_BINARY} ", f"ExecStart={script} "))
    result = subprocess.run(
        [systemd_analyze(), "verify", str(copy)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.stderr == "", result.stderr
    assert result.returncode == 0, result.stdout


def test_unit_exposure_is_at_most_1_5() -> None:
    result = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    match = re.search(r"Overall exposure level for tempo-bridge\.service: (\d+\.\d+)",
                      result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match[1]) <= MAX_EXPOSURE, result.stdout


def test_unit_settings_the_daemon_relies_on() -> None:
    settings = [
        line for line in UNIT.read_text().splitlines() if line and not line.startswith("#")
    ]
    for wanted in (
        "Type=notify", "NotifyAccess=main", "WatchdogSec=30s", "Restart=on-failure",
        "ExecReload=/bin/sh -c 'kill -HUP $$MAINPID'", "DynamicUser=yes",
        "StateDirectory=tempo-bridge",
        "Environment=TEMPO_BRIDGE_STATE_DIR=%S/tempo-bridge",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "MemoryDenyWriteExecute=yes",
    ):
        assert wanted in settings, wanted
    assert not any(s.startswith("PrivateNetwork=") for s in settings)


# -- the notifier -----------------------------------------------------------------------------


class Listener:
    """A datagram socket in the role of systemd: records each message with its arrival time."""

    def __init__(self, address: str) -> None:
        self.address = address  # as written in $NOTIFY_SOCKET
        self.messages: list[tuple[float, str]] = []
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bind_to = socket_address(address)
        assert bind_to is not None
        self._socket.bind(bind_to)
        self._socket.settimeout(0.02)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._socket.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._socket.close()

    def texts(self) -> list[str]:
        return [text for _, text in self.messages]

    def times(self, first_line: str) -> list[float]:
        return [t for t, text in self.messages if text.split("\n")[0] == first_line]

    async def wait_for(self, first_line: str, *, after: int = 0, within: float = 20) -> str:
        """The first message from index ``after`` on whose first line is ``first_line``."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for text in self.texts()[after:]:
                if text.split("\n")[0] == first_line:
                    return text
            await asyncio.sleep(0.01)
        raise AssertionError(f"no {first_line} within {within} s; got {self.texts()}")


@pytest.fixture
def listener() -> Iterator[Listener]:
    """Listening on an abstract socket name, as ``@name`` in $NOTIFY_SOCKET."""
    server = Listener(f"@tempo-bridge-test-{uuid.uuid4().hex}")
    yield server
    server.close()


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = Notifier.from_environ({}, pid=os.getpid())
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert notifier.ready("x") is False
    assert notifier.watchdog() is False
    asyncio.run(asyncio.wait_for(notifier.run_watchdog(), 1))  # returns at once


def test_socket_addresses() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@abstract/name") == "\0abstract/name"
    assert socket_address("@") is None
    assert socket_address("relative/path") is None
    assert socket_address("vsock:2:1234") is None


def test_watchdog_interval_is_half_the_period_and_only_for_our_pid() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, 42) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, 42) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "41"}, 42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, 42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}, 42) is None
    assert watchdog_interval({}, 42) is None


def test_messages_on_a_path_socket() -> None:
    with tempfile.TemporaryDirectory() as directory:  # short: socket paths have 108 bytes
        server = Listener(os.path.join(directory, "notify"))
        try:
            notifier = Notifier.from_environ(
                {"NOTIFY_SOCKET": server.address, "WATCHDOG_USEC": "1000000"}, pid=os.getpid()
            )
            assert notifier.watchdog_interval == 0.5
            before = monotonic_usec()
            assert notifier.ready("2 rule groups,\nmultiline")
            assert notifier.reloading()
            assert notifier.status("evaluating")
            assert notifier.watchdog()
            assert notifier.stopping()
            notifier.close()
            deadline = time.monotonic() + 5
            while len(server.messages) < 5 and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            server.close()
    texts = server.texts()
    assert texts[0] == "READY=1\nSTATUS=2 rule groups, multiline"
    reloading, usec = texts[1].split("\n")
    assert reloading == "RELOADING=1"
    assert before <= int(usec.removeprefix("MONOTONIC_USEC=")) <= monotonic_usec()
    assert texts[2:] == ["STATUS=evaluating", "WATCHDOG=1", "STOPPING=1"]


def test_a_missing_socket_is_reported_not_raised() -> None:
    notifier = Notifier("\0tempo-bridge-test-nobody-listens")
    assert notifier.ready() is False
    assert notifier.watchdog() is False


# -- the daemon, in-process -------------------------------------------------------------------

WATCHDOG_USEC = 200_000  # a ping every 0.1 s
def write_config(directory: Path, tempo_url: str, write_url: str) -> Path:
    """One group ``notify`` counting every span in one-second windows, and its config."""
    write_rules(directory / "rules.yaml", Rule("spans_total", "{ } | count_over_time()"),
                group="notify", settle=None)
    return write_bridge_config(directory, tempo_url, write_url)


@pytest.fixture
async def tempo() -> AsyncIterator[str]:
    async with serving(TempoDouble(query_end_cutoff=0.0)) as url:
        yield url


async def test_daemon_notifies_ready_watchdog_reloading_and_stopping(
    tmp_path: Path, tempo: str, listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the notifications matter here: the receiver is a port nobody listens on.
    config_path = write_config(tmp_path, tempo, f"http://127.0.0.1:{free_port()}/api/v1/write")
    monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    async with running(make_daemon(config_path)) as daemon:
        ready = await listener.wait_for("READY=1")
        assert ready == "READY=1\nSTATUS=1 rule groups, 1 rules"
        assert daemon.web.port  # READY comes after the web server is up
        await asyncio.sleep(0.6)

        # cadence: half of WATCHDOG_USEC
        pings = listener.times("WATCHDOG=1")
        assert len(pings) >= 5
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert 0.08 <= statistics.median(gaps) <= 0.13, gaps
        assert max(gaps) < 0.5, gaps  # a loaded machine may delay one

        # a blocked event loop sends no ping while blocked, and pings again right after
        blocked: list[float] = []

        def block() -> None:
            blocked.append(time.monotonic())
            time.sleep(0.6)
            blocked.append(time.monotonic())

        asyncio.get_running_loop().call_soon(block)
        await asyncio.sleep(0.1)  # runs after the block
        await asyncio.sleep(0.2)
        start, end = blocked
        pings = listener.times("WATCHDOG=1")
        assert not [t for t in pings if start + 0.02 < t < end], (start, end, pings)
        assert [t for t in pings if end <= t < end + 0.15], "no ping after the block"

        # reload: RELOADING=1 (with MONOTONIC_USEC), then READY=1
        seen = len(listener.messages)
        assert await daemon.reload() is None
        reloading = await listener.wait_for("RELOADING=1", after=seen)
        assert re.fullmatch(
            r"RELOADING=1\nMONOTONIC_USEC=\d+\nSTATUS=reloading the rules", reloading
        )
        usec = int(reloading.split("\n")[1].removeprefix("MONOTONIC_USEC="))
        assert 0 <= monotonic_usec() - usec < 5_000_000
        ready = await listener.wait_for("READY=1", after=seen)
        assert ready == "READY=1\nSTATUS=1 rule groups, 1 rules"

        # a failed reload still ends the reload, and says so
        (tmp_path / "rules.yaml").write_text("groups: [")
        seen = len(listener.messages)
        assert await daemon.reload() is not None
        await listener.wait_for("RELOADING=1", after=seen)
        ready = await listener.wait_for("READY=1", after=seen)
        assert ready == "READY=1\nSTATUS=1 rule groups, 1 rules; reload failed, previous rules kept"
    stopping = await listener.wait_for("STOPPING=1")
    assert stopping == "STOPPING=1\nSTATUS=stopping"
    stopped_at = listener.times("STOPPING=1")[0]
    await asyncio.sleep(0.3)
    assert not [t for t in listener.times("WATCHDOG=1") if t > stopped_at]


async def test_daemon_without_notify_socket_runs_as_before(
    tmp_path: Path, tempo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    config_path = write_config(tmp_path, tempo, f"http://127.0.0.1:{free_port()}/api/v1/write")
    async with running(make_daemon(config_path)) as daemon:
        assert not daemon.notifier.enabled
        assert await daemon.reload() is None


# -- the daemon as systemd runs it: a child process, real signals, MemoryDenyWriteExecute -----


def test_the_filter_refuses_writable_executable_memory() -> None:
    if not mdwe.supported():
        pytest.skip("the MemoryDenyWriteExecute filter knows x86_64 and aarch64 Linux only")
    probe = (
        "import mmap\n"
        "try:\n"
        "    mmap.mmap(-1, 4096, prot=mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
        "except PermissionError:\n"
        "    print('refused')\n"
    )
    result = subprocess.run(
        [sys.executable, mdwe.__file__, sys.executable, "-c", probe],
        capture_output=True, text=True, timeout=30, check=True,
    )
    assert result.stdout == "refused\n", result.stderr


async def test_daemon_under_memory_deny_write_execute_with_real_signals(
    tmp_path: Path, tempo: str, listener: Listener
) -> None:
    if not mdwe.supported():
        pytest.skip("the MemoryDenyWriteExecute filter knows x86_64 and aarch64 Linux only")
    env = {
        **os.environ,
        "NOTIFY_SOCKET": listener.address,
        "WATCHDOG_USEC": "1000000",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("WATCHDOG_PID", None)
    log_path = tmp_path / "daemon.log"
    async with receiving() as receiver:
        config_path = write_config(tmp_path, tempo, receiver.url)
        with log_path.open("w") as log:
            child = await asyncio.create_subprocess_exec(
                sys.executable, mdwe.__file__,
                sys.executable, "-m", "bridge", "run", "--config", str(config_path),
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        try:
            await listener.wait_for("READY=1")
            # it queried Tempo and sent samples (protobuf, snappy, HTTP) under the filter
            await eventually(lambda: receiver.requests, "a remote-write request")
            await listener.wait_for("WATCHDOG=1")
            seen = len(listener.messages)
            child.send_signal(signal.SIGHUP)
            await listener.wait_for("RELOADING=1", after=seen)
            await listener.wait_for("READY=1", after=seen)
            child.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(child.wait(), 20) == 0
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()
    output = log_path.read_text()
    assert listener.texts()[-1] == "STOPPING=1\nSTATUS=stopping", output
    assert '"level": "error"' not in output, output
