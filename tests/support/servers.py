"""Servers the tests start and always stop (the Tempo double over HTTP, a remote-write
receiver), a free port, and waiting for what they do."""

from __future__ import annotations

import asyncio
import inspect
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web

from tests.doubles.tempo import TempoDouble


async def listen(app: web.Application) -> tuple[web.AppRunner, str]:
    """``app`` served on a free port of 127.0.0.1: its runner (clean it up to stop) and its
    base URL, ``http://127.0.0.1:PORT``."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (as long as nobody takes it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def eventually(
    condition: Callable[[], object], what: str, within: float = 20.0, every: float = 0.01
) -> None:
    """Wait until ``condition()`` is true, looking ``every`` seconds; after ``within``
    seconds fail the test, naming ``what`` was awaited. For what real I/O decides (a server
    up, a request sent), never to let a wall-clock phase pass."""
    deadline = time.monotonic() + within
    while not await _holds(condition):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:g} s waiting for {what}")
        await asyncio.sleep(every)


async def _holds(condition: Callable[[], object]) -> bool:
    """``condition()``, awaited when it is a coroutine function's."""
    result = condition()
    if inspect.isawaitable(result):
        result = await result
    return bool(result)


@asynccontextmanager
async def serving(double: TempoDouble) -> AsyncIterator[str]:
    """The Tempo double served over HTTP for the ``async with`` block: its base URL."""
    url = await double.start()
    try:
        yield url
    finally:
        await double.stop()


@dataclass(frozen=True)
class Write:
    """One request a :class:`Receiver` got."""

    headers: dict[str, str]
    body: bytes
    query: str = ""


class Receiver:
    """A remote-write receiver that answers every request with ``status`` and ``text``
    (204 and nothing: accepted) and records each request."""

    def __init__(self, status: int = 204, text: str = "") -> None:
        self.status = status
        self.text = text
        self.requests: list[Write] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        """Listen on a free port; returns the write URL."""
        app = web.Application()
        app.router.add_post("/api/v1/write", self._write)
        self._runner, base = await listen(app)
        self.url = f"{base}/api/v1/write"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _write(self, request: web.Request) -> web.Response:
        self.requests.append(
            Write(dict(request.headers), await request.read(), request.query_string))
        return web.Response(status=self.status, text=self.text or None)


@asynccontextmanager
async def receiving(status: int = 204, text: str = "") -> AsyncIterator[Receiver]:
    """A :class:`Receiver` listening for the ``async with`` block."""
    receiver = Receiver(status, text)
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()
