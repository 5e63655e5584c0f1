"""A remote-write receiver in front of a real one, answering queued failures first.

``inject(503, 503, 403)`` makes the next three write requests get those statuses, in order,
instead of reaching the receiver behind; every other request is forwarded as it came. Each
refused request is kept with the number of samples it held, so that a test can predict what
the sender counts as retried or dropped.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import httpx
from aiohttp import web

from bridge.remote_write import decode_write_request
from tests.support.servers import listen


@dataclass(frozen=True)
class Refused:
    """A write request answered with an injected status instead of being forwarded."""

    status: int
    samples: int


class FaultyReceiver:
    """Forwards ``POST /api/v1/write`` to ``upstream``, except for the injected answers."""

    def __init__(self, upstream: str) -> None:
        self._upstream = upstream
        self._faults: deque[int] = deque()
        self._client = httpx.AsyncClient(timeout=10.0)
        self._runner: web.AppRunner | None = None
        self.refused: list[Refused] = []
        self.forwarded_samples = 0
        """Samples of the forwarded requests that the receiver behind accepted."""
        self.url = ""

    def inject(self, *statuses: int) -> None:
        """Queue statuses: each of the next requests is answered with one, in order."""
        self._faults.extend(statuses)

    @property
    def pending_faults(self) -> int:
        return len(self._faults)

    async def start(self) -> str:
        """Listen on a free port of 127.0.0.1; returns the write URL."""
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_post("/api/v1/write", self._handle)
        self._runner, base = await listen(app)
        self.url = f"{base}/api/v1/write"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self._client.aclose()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        samples = sum(len(points) for _, points, _ in decode_write_request(body))
        if self._faults:
            status = self._faults.popleft()
            self.refused.append(Refused(status, samples))
            return web.Response(status=status, text=f"injected {status}\n")
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in ("host", "content-length", "connection")}
        answer = await self._client.post(self._upstream, content=body, headers=headers)
        if 200 <= answer.status_code < 300:
            self.forwarded_samples += samples
        return web.Response(status=answer.status_code, body=answer.content)
