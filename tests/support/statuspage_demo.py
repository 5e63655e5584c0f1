"""A running daemon for the status page: the shipped OpenRouter rules and a second group,
one rule of which fails, against the Tempo double and a stub receiver.

``tests/test_statuspage_browser.py`` renders its page with chromium, and
``scripts/status-page-screenshot`` (``python -m tests.support.statuspage_demo PNG``) takes
``docs/status-page.png`` of it. With ``hostile=True`` markup is planted wherever the page
shows outside text: a rule whose queries Tempo answers with ``<script>alert(1)</script>``
in its error, a label value, an expression and the receiver's error body.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from bridge.components import load_rules
from bridge.config import load_config
from bridge.daemon import Daemon
from bridge.status import Status
from tests.doubles.tempo import InjectedFaultError, TempoDouble
from tests.support import chromium
from tests.support.servers import Receiver, eventually, listen
from tests.support.traffic import make_spans

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_RULES = ROOT / "rules" / "openrouter.yaml"

TEMPO_SCRIPT = "<script>alert(1)</script>"
"""In the error Tempo answers to the hostile rule's queries."""
LABEL_SCRIPT = "<script>alert(2)</script>"
"""The hostile rule's label value."""
EXPR_MARKUP = "<b>bold</b>"
"""In the hostile rule's expression (a string it compares an attribute with)."""
RECEIVER_SCRIPT = "<script>alert(3)</script>"
"""In the receiver's error body, when it refuses."""
RELOAD_MARKUP = "<img src=x onerror=alert(4)>"
"""In the error of a reload that ``break_hostile_rules`` makes fail."""
HOSTILE_GROUP = "<i>hostile</i>"
HOSTILE_RULE = "hostile_total"
TEMPO_ERROR = f"parse error at line 1, col 45: syntax error: unexpected {TEMPO_SCRIPT}"

LATENCY_RULES = """\
groups:
  - name: openrouter-latency
    interval: 1m
    query_offset: 30s
    start: 30m
    settle: [10m]
    labels: {team: platform}
    rules:
      - record: openrouter_generation_duration_seconds_max
        expr: >-
          { resource.service.name = "openrouter" && name = "LLM Generation" }
          | max_over_time(duration) by (span.gen_ai.request.model)
        kind: gauge
        rename: {gen_ai_request_model: model}
      - record: openrouter_requests_per_key_total
        expr: >-
          { resource.service.name = "openrouter" && name = "LLM Generation" }
          | count_over_time()
          by (span.gen_ai.request.model, span.trace.metadata.openrouter.api_key_name)
        kind: counter
        limit: 4
        rename:
          gen_ai_request_model: model
          trace_metadata_openrouter_api_key_name: api_key_name
"""
"""The second group: its per-key counter has more series than its limit, so it fails."""

HOSTILE_RULES = f"""\
groups:
  - name: '{HOSTILE_GROUP}'
    interval: 1m
    query_offset: 30s
    start: 30m
    rules:
      - record: {HOSTILE_RULE}
        expr: '{{ resource.service.name = "openrouter" && span.note = "{EXPR_MARKUP}" }}
          | count_over_time()'
        kind: counter
        labels: {{note: "{LABEL_SCRIPT}"}}
"""
"""A group named with markup, whose one rule Tempo fails with markup in the error."""


class FailingTempo:
    """The Tempo double behind a front that answers the queries naming ``marker`` with
    ``status`` and ``body``, as Tempo answers a query it refuses; others reach the double."""

    def __init__(self, double: TempoDouble, marker: str, status: int, body: str) -> None:
        self.double = double
        self._marker, self._status, self._body = marker, status, body
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner, url = await listen(app)
        return url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        params: dict[str, str] = {}
        for key, value in request.query.items():
            params.setdefault(key, value)
        if self._marker in params.get("q", ""):
            return web.Response(status=self._status, text=self._body)
        try:
            answer = await self.double.serve(request.path, params, dict(request.headers))
        except InjectedFaultError:
            raise asyncio.CancelledError() from None
        return web.Response(status=answer.status, body=answer.body,
                            headers={"Content-Type": answer.content_type})


@dataclass
class Demo:
    daemon: Daemon
    receiver: Receiver
    tempo: FailingTempo
    dir: Path
    url: str
    """The daemon's base URL, ``http://127.0.0.1:PORT/``."""

    def status(self) -> Status:
        return self.daemon.status.snapshot()


def shipped_rules() -> str:
    """The shipped default rules, evaluated from 30 minutes back (settled at 10m and 1h)."""
    text = SHIPPED_RULES.read_text()
    text = re.sub(r"(?m)^(\s+)query_offset: .*$", r"\1query_offset: 30s\n\1start: 30m", text)
    return text


@contextlib.asynccontextmanager
async def running(
    directory: Path, *, hostile: bool = False, receiver_status: int = 204,
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[Demo]:
    """The daemon running with its rules in ``directory`` until the block ends; its rules
    have all been evaluated once when the block begins."""
    now = clock()
    double = TempoDouble(make_spans(now - 2400, 3600, seed=7, gap=(0.5, 3.0)),
                         query_end_cutoff=0)
    tempo = FailingTempo(double, "span.note", 400, TEMPO_ERROR)
    error = f"service unavailable {RECEIVER_SCRIPT}\n" if hostile else "overloaded\n"
    receiver = Receiver(receiver_status, error if receiver_status >= 300 else "")
    tempo_url = await tempo.start()
    write_url = await receiver.start()
    (directory / "openrouter.yaml").write_text(shipped_rules())
    (directory / "latency.yaml").write_text(LATENCY_RULES)
    rule_files = ["openrouter.yaml", "latency.yaml"]
    if hostile:
        (directory / "hostile.yaml").write_text(HOSTILE_RULES)
        rule_files.append("hostile.yaml")
    config_path = directory / "bridge.yaml"
    config_path.write_text(textwrap.dedent(f"""\
        tempo: {{url: "{tempo_url}", query_end_cutoff: 0s, ingest_delay: 0s}}
        remote_write: {{url: "{write_url}"}}
        state_dir: state
        rule_files: {json.dumps(rule_files)}
        web: {{listen_address: "127.0.0.1:0"}}
        """))
    config = load_config(config_path)
    daemon = Daemon(config_path, config, load_rules(config), clock=clock)
    task = asyncio.create_task(daemon.run())
    try:
        await eventually(lambda: bool(daemon.web.port) or task.done(), "the web server to listen",
                         within=WAIT, every=0.05)
        if task.done():
            task.result()
        demo = Demo(daemon, receiver, tempo, directory, f"http://127.0.0.1:{daemon.web.port}/")
        await eventually(lambda: all(r.last is not None for g in demo.status().groups
                                     for r in g.rules), "every rule to be evaluated",
                         within=WAIT, every=0.05)
        yield demo
    finally:
        daemon.stop()
        await task
        await tempo.stop()
        await receiver.stop()


WAIT = 60.0


def break_hostile_rules(demo: Demo) -> None:
    """Make the hostile group's file invalid, with markup in what the reload reports."""
    (demo.dir / "hostile.yaml").write_text(
        HOSTILE_RULES.replace("interval: 1m", f"interval: '{RELOAD_MARKUP}'"))


async def screenshot(demo: Demo, png: Path, *, width: int = 1280) -> None:
    """``png``: the whole page of ``demo`` in a window ``width`` pixels wide."""
    async with chromium.tab(width=width, height=800) as page:
        await page.goto(demo.url + "?refresh=0")
        await page.screenshot(png, full_page=True)


async def take_screenshot(png: Path, *, width: int = 1280) -> None:
    """``png``: the whole page of a demo daemon that has run a few seconds."""
    with tempfile.TemporaryDirectory(prefix="tempo-bridge-") as tmp:
        async with running(Path(tmp)) as demo:
            await asyncio.sleep(2)  # times read "2 s ago", not "0 s ago"
            await screenshot(demo, png, width=width)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("png", type=Path, help="where to write the screenshot")
    parser.add_argument("--width", type=int, default=1280)
    args = parser.parse_args(argv)
    asyncio.run(take_screenshot(args.png, width=args.width))
    width, height = chromium.png_size(args.png)
    print(f"{args.png}: {width}x{height}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
