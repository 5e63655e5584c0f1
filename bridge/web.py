"""HTTP endpoints: ``/metrics``, ``/-/healthy``, ``/-/ready`` and ``POST /-/reload``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from bridge.errors import BridgeError

Reload = Callable[[], Awaitable[str | None]]
"""Reloads the rules; returns None on success or the error to report."""


class WebServer:
    """The bridge's HTTP server, bound to ``host:port`` (127.0.0.1 by default)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        reload: Reload,
        ready: Callable[[], bool],
    ) -> None:
        self._registry = registry
        self._reload = reload
        self._ready = ready
        app = web.Application()
        app.add_routes(
            [
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
