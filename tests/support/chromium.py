"""Debian's chromium, headless: a page's DOM, its width and a screenshot, as a browser has it.

Uses ``/usr/bin/chromium`` (Debian's package, installed by ``scripts/test``) or
``$CHROMIUM_BIN``. A missing binary is an error, not a skip: the tests that use it must not
pass on a machine that cannot run them. Chromium runs as a subprocess awaited with asyncio,
so a daemon serving the page in the same event loop goes on answering.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import struct
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

DEFAULT_BINARY = "/usr/bin/chromium"
TIMEOUT = 60.0
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--force-device-scale-factor=1",
)


class ChromiumError(RuntimeError):
    """Chromium is missing, failed or did not finish in time."""


def binary() -> str:
    path = os.environ.get("CHROMIUM_BIN", DEFAULT_BINARY)
    if not os.access(path, os.X_OK):
        raise ChromiumError(
            f"{path} not found: install Debian's chromium (apt-get install chromium; "
            "scripts/test does) or set CHROMIUM_BIN"
        )
    return path


async def run(url: str, *args: str, width: int = 1280, height: int = 900) -> str:
    """Run headless chromium on ``url`` with ``args``; returns its standard output."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        process = await asyncio.create_subprocess_exec(
            binary(), *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
            *args, url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(), TIMEOUT)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise ChromiumError(f"chromium did not finish within {TIMEOUT} s on {url}") from None
    if process.returncode != 0:
        raise ChromiumError(
            f"chromium exited {process.returncode} on {url}: {err.decode()[-2000:]}")
    return out.decode()


async def dump_dom(url: str, *, width: int = 1280, height: int = 900) -> str:
    """The DOM of ``url`` once loaded, serialised as HTML."""
    return await run(url, "--dump-dom", width=width, height=height)


async def screenshot(url: str, png: Path, *, width: int, height: int) -> None:
    """A PNG of the top ``width`` x ``height`` pixels of ``url``."""
    await run(url, f"--screenshot={png}", width=width, height=height)
    if not await asyncio.to_thread(png.is_file):
        raise ChromiumError(f"chromium wrote no screenshot of {url}")


def png_size(png: Path) -> tuple[int, int]:
    """Width and height of a PNG, from its IHDR chunk."""
    head = png.read_bytes()[:24]
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ChromiumError(f"{png} is not a PNG")
    width, height = struct.unpack(">II", head[16:24])
    return width, height


class Tab:
    """A chromium tab driven over the DevTools protocol (CDP), for what ``--dump-dom`` and
    ``--screenshot`` cannot do: emulate a phone (headless windows are at least 500 pixels
    wide), and ask the page as laid out for its width or its visible text."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, session: str) -> None:
        self._ws = ws
        self._session = session
        self._events: list[dict[str, Any]] = []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command to the tab and return its result."""
        return await _call(self._ws, self._events, method, params, self._session)

    async def goto(self, url: str) -> None:
        """Load ``url`` and wait for its load event."""
        self._events.clear()
        await self.call("Page.navigate", url=url)
        await _event(self._ws, self._events, "Page.loadEventFired", self._session)

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (DevTools is not bound by
        the page's Content-Security-Policy)."""
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise ChromiumError(f"{expression!r} failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def screenshot(self, png: Path, *, full_page: bool = False) -> None:
        """A PNG of the viewport, or of the whole page's height."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            width, height = await self.evaluate(
                "[document.documentElement.clientWidth, document.documentElement.scrollHeight]")
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1})
        result = await self.call("Page.captureScreenshot", **params)
        await asyncio.to_thread(png.write_bytes, base64.b64decode(result["data"]))


@contextlib.asynccontextmanager
async def tab(*, width: int, height: int, mobile: bool = False) -> AsyncIterator[Tab]:
    """A headless chromium with one tab whose viewport is ``width`` x ``height`` CSS
    pixels; ``mobile`` emulates a phone (the page's viewport meta applies)."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        process = await asyncio.create_subprocess_exec(
            binary(), *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
            "about:blank",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            endpoint = await _devtools_endpoint(Path(profile), process)
            async with aiohttp.ClientSession() as http, http.ws_connect(
                endpoint, max_msg_size=0
            ) as ws:
                events: list[dict[str, Any]] = []
                target = await _call(ws, events, "Target.createTarget", {"url": "about:blank"})
                attached = await _call(ws, events, "Target.attachToTarget",
                                       {"targetId": target["targetId"], "flatten": True})
                page = Tab(ws, attached["sessionId"])
                await page.call("Page.enable")
                await page.call("Emulation.setDeviceMetricsOverride", width=width,
                                height=height, deviceScaleFactor=1, mobile=mobile)
                yield page
                await _call(ws, events, "Browser.close", {})
                # it writes its profile while it shuts down: wait before removing it
                await asyncio.wait_for(process.wait(), TIMEOUT)
        finally:
            if process.returncode is None:
                process.kill()
            await process.wait()


async def _devtools_endpoint(profile: Path, process: asyncio.subprocess.Process) -> str:
    """The browser's DevTools WebSocket URL, from the file chromium writes once it listens."""
    active = profile / "DevToolsActivePort"
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while asyncio.get_running_loop().time() < deadline:
        if process.returncode is not None:
            raise ChromiumError(f"chromium exited {process.returncode} at start")
        lines = active.read_text().split() if active.is_file() else []
        if len(lines) == 2:
            return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
        await asyncio.sleep(0.05)
    raise ChromiumError(f"chromium did not open its DevTools port within {TIMEOUT} s")


_IDS = itertools.count(1)


async def _call(
    ws: aiohttp.ClientWebSocketResponse, events: list[dict[str, Any]], method: str,
    params: dict[str, Any], session: str | None = None,
) -> dict[str, Any]:
    """Send a CDP command and read messages until its answer; events read meanwhile are
    kept in ``events``."""
    message_id = next(_IDS)
    message: dict[str, Any] = {"id": message_id, "method": method, "params": params}
    if session is not None:
        message["sessionId"] = session
    await ws.send_json(message)
    while True:
        answer = await _receive(ws)
        if answer.get("id") != message_id:
            events.append(answer)
            continue
        if "error" in answer:
            raise ChromiumError(f"{method} failed: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result


async def _event(
    ws: aiohttp.ClientWebSocketResponse, events: list[dict[str, Any]], name: str,
    session: str,
) -> dict[str, Any]:
    """Wait for the event ``name`` of the tab ``session`` (or take it from ``events``)."""
    while True:
        for event in events:
            if event.get("method") == name and event.get("sessionId") == session:
                events.remove(event)
                return event
        events.append(await _receive(ws))


async def _receive(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    message = await asyncio.wait_for(ws.receive(), TIMEOUT)
    if message.type != aiohttp.WSMsgType.TEXT:
        raise ChromiumError(f"the DevTools connection ended: {message.type.name}")
    answer: dict[str, Any] = json.loads(message.data)
    return answer
