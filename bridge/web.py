"""HTTP endpoints: the status page ``/`` and ``/api/v1/status``, ``/metrics``,
``/-/healthy``, ``/-/ready`` and ``POST /-/reload``."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from bridge import statuspage
from bridge.errors import BridgeError
from bridge.status import Status

Reload = Callable[[], Awaitable[str | None]]
"""Reloads the rules; returns None on success or the error to report."""

MAX_REFRESH = 86400
_PAGE_HEADERS = {
    # The page runs no script and loads nothing: even markup that escaped escaping
    # could not run or call out.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class WebServer:
    """The bridge's HTTP server, bound to ``host:port`` (127.0.0.1 by default)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        reload: Reload,
        ready: Callable[[], bool],
        status: Callable[[], Status],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._registry = registry
        self._reload = reload
        self._ready = ready
        self._status = status
        self._clock = clock
        app = web.Application()
        app.add_routes(
            [
                web.get("/", self._page),
                web.get("/api/v1/status", self._status_json),
                web.get("/metrics", self._metrics),
                web.get("/-/healthy", self._healthy),
                web.get("/-/ready", self._readiness),
                web.post("/-/reload", self._reload_handler),
                web.put("/-/reload", self._reload_handler),
            ]
        )
        self._runner = web.AppRunner(app, access_log=None)
        self.port = 0

    async def start(self, listen_address: str) -> None:
        host, _, port = listen_address.rpartition(":")
        await self._runner.setup()
        site = web.TCPSite(self._runner, host.strip("[]") or "127.0.0.1", int(port))
        try:
            await site.start()
        except OSError as exc:
            raise BridgeError(
                f"cannot listen on {listen_address} (web.listen_address): {exc.strerror or exc}"
            ) from exc
        # the port bound, which differs from the one asked for when that was 0
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _page(self, request: web.Request) -> web.Response:
        text = request.query.get("refresh", str(statuspage.DEFAULT_REFRESH))
        if not (text.isascii() and text.isdigit()) or int(text) > MAX_REFRESH:
            return web.Response(
                status=400,
                text=f"refresh must be a whole number of seconds from 0 (never) to "
                f"{MAX_REFRESH}, not {text!r}\n",
            )
        page = statuspage.render(self._status(), self._clock(), int(text))
        return web.Response(text=page, content_type="text/html", headers=_PAGE_HEADERS)

    async def _status_json(self, request: web.Request) -> web.Response:
        document = statuspage.document(self._status(), self._clock())
        return web.json_response(document, headers={"Cache-Control": "no-store"})

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthy(self, request: web.Request) -> web.Response:
        return web.Response(text="tempo-bridge is Healthy.\n")

    async def _readiness(self, request: web.Request) -> web.Response:
        if self._ready():
            return web.Response(text="tempo-bridge is Ready.\n")
        return web.Response(status=503, text="tempo-bridge is not ready.\n")

    async def _reload_handler(self, request: web.Request) -> web.Response:
        error = await self._reload()
        if error is None:
            return web.Response(text="rules reloaded\n")
        return web.Response(status=400, text=f"reload failed, previous rules kept:\n{error}\n")
