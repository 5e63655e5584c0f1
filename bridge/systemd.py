"""systemd integration: sd_notify messages (ready, reloading, stopping, status) and the watchdog.

The protocol is one datagram of ``KEY=value`` lines sent to the AF_UNIX socket named by
``$NOTIFY_SOCKET`` (a path, or an abstract name written with a leading ``@``); see
sd_notify(3). When the variable is unset (not started by systemd, or not ``Type=notify``)
every call is a no-op, so the daemon runs the same way from a shell.

The watchdog pings come from the asyncio loop itself (:meth:`Notifier.run_watchdog`), at
half of ``$WATCHDOG_USEC``: a loop blocked for longer than the watchdog period stops
pinging, and systemd restarts the service.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger("bridge.systemd")


def socket_address(value: str) -> str | None:
    """The address to send to for a ``$NOTIFY_SOCKET`` value; None if unsupported.

    ``@name`` is the abstract socket ``\\0name``; an absolute path is used as is. Other forms
    (``vsock:`` of systemd 254 and later, relative paths) are not supported.
    """
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between watchdog pings (half of ``$WATCHDOG_USEC``), or None when not asked.

    ``$WATCHDOG_PID``, when set, names the process that must ping: another process's
    watchdog is not ours (a child that inherited the environment).
    """
    usec_text = environ.get("WATCHDOG_USEC", "")
    if not usec_text.isdigit() or int(usec_text) == 0:
        return None
    pid_text = environ.get("WATCHDOG_PID", "")
    if pid_text and (not pid_text.isdigit() or int(pid_text) != pid):
        return None
    return int(usec_text) / 1e6 / 2


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as ``RELOADING=1`` wants it in ``MONOTONIC_USEC``."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """Sends sd_notify messages to systemd; every method is a no-op without a socket."""

    def __init__(self, address: str | None = None, *, watchdog: float | None = None) -> None:
        """``address`` as returned by :func:`socket_address`; ``watchdog`` the ping interval."""
        self.address = address
        self.watchdog_interval = watchdog if address is not None else None
        self._socket: socket.socket | None = None
        self._failing = False

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str] = os.environ, pid: int | None = None
    ) -> Notifier:
        """The notifier systemd asked for through ``$NOTIFY_SOCKET`` and ``$WATCHDOG_USEC``."""
        value = environ.get("NOTIFY_SOCKET", "")
        address = socket_address(value) if value else None
        if value and address is None:
            log.warning("NOTIFY_SOCKET not supported, systemd will not be notified",
                        notify_socket=value)
        interval = watchdog_interval(environ, os.getpid() if pid is None else pid)
        return cls(address, watchdog=interval)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; whether it was sent.

        The socket is non-blocking: a full queue loses the message rather than block the
        event loop. A failure is logged once until a message goes through again.
        """
        if self.address is None:
            return False
        message = "\n".join(assignments).encode()
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.setblocking(False)
            self._socket.sendto(message, self.address)
        except OSError as exc:
            if not self._failing:
                log.warning("cannot notify systemd", error=str(exc),
                            message=message.decode().replace("\n", " "))
            self._failing = True
            return False
        self._failing = False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: start-up or a reload is complete."""
        return self.notify("READY=1", *_status(status))

    def reloading(self, status: str | None = None) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC`` (which systemd 253+ wants); READY=1 ends it."""
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}", *_status(status))

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: shutting down."""
        return self.notify("STOPPING=1", *_status(status))

    def status(self, status: str) -> bool:
        """``STATUS=...``: one line shown by ``systemctl status``."""
        return self.notify(*_status(status))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the service is alive."""
        return self.notify("WATCHDOG=1")

    async def run_watchdog(self) -> None:
        """Ping the watchdog from this event loop until cancelled; returns at once if unused."""
        interval = self.watchdog_interval
        if interval is None:
            return
        log.debug("watchdog enabled", interval=interval)
        while True:
            self.watchdog()
            await asyncio.sleep(interval)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _status(status: str | None) -> tuple[str, ...]:
    if status is None:
        return ()
    return ("STATUS=" + " ".join(status.split()),)
