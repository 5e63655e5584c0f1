"""Secrets: read from files, sent where they belong, never in logs, metrics, errors, output
or the status page and its JSON."""

from __future__ import annotations

import asyncio
import io
import json
import textwrap
import time
from pathlib import Path

import httpx
from aiohttp import web

from bridge.components import load_rules
from bridge.config import load_config
from bridge.daemon import Daemon
from bridge.logs import configure
from tests.doubles.tempo import Span, TempoDouble

TEMPO_TOKEN = "tempo-s3cret-token-4f1c"
RW_PASSWORD = "rw-pa55word-9a7e"
URL_TOKEN = "url-t0ken-5b2d"  # some receivers take a token in the URL's query


async def test_secrets_are_used_but_never_shown(tmp_path: Path) -> None:
    now = time.time()
    tempo = TempoDouble(
        [Span(start_ns=int((now - 2 + i / 10) * 1e9), attributes={"model": "m"},
              resource={"service.name": "svc"}) for i in range(40)],
        query_end_cutoff=0,
    )
    tempo_url = await tempo.start()
    seen_auth: list[str] = []
    seen_query: list[str] = []

    async def refuse(request: web.Request) -> web.Response:
        seen_auth.append(request.headers.get("Authorization", ""))
        seen_query.append(request.query_string)
        return web.Response(status=401, text="bad credentials\n")

    app = web.Application()
    app.router.add_post("/api/v1/write", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]

    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "tempo-token").write_text(TEMPO_TOKEN + "\n")
    (credentials / "rw-password").write_text(RW_PASSWORD)
    (tmp_path / "rules.yaml").write_text(
        textwrap.dedent(
            """\
            groups:
              - name: g
                interval: 1s
                query_offset: 1s
                settle: [60s]
                rules:
                  - record: requests_total
                    expr: '{ resource.service.name = "svc" } | count_over_time() by (span.model)'
                    kind: counter
            """
        )
    )
    config_path = tmp_path / "bridge.yaml"
    config_path.write_text(
        textwrap.dedent(
            f"""\
            tempo:
              url: {tempo_url}
              bearer_token_file: tempo-token
              query_end_cutoff: 0s
              ingest_delay: 0s
            remote_write:
              url: http://127.0.0.1:{port}/api/v1/write?token={URL_TOKEN}
              basic_auth: {{username: bridge, password_file: rw-password}}
            state_dir: state
            rule_files: [rules.yaml]
            web: {{listen_address: "127.0.0.1:0"}}
            log_level: debug
            """
        )
    )
    logs = io.StringIO()
    configure("debug", stream=logs)
    config = load_config(config_path, environ={"CREDENTIALS_DIRECTORY": str(credentials)})
    assert TEMPO_TOKEN not in repr(config)
    assert RW_PASSWORD not in repr(config)
    assert TEMPO_TOKEN not in str(config.model_dump())
    daemon = Daemon(config_path, config, load_rules(config))
    task = asyncio.create_task(daemon.run())
    try:
        for _ in range(100):
            await asyncio.sleep(0.05)
            if seen_auth and daemon.web.port:
                break
        base = f"http://127.0.0.1:{daemon.web.port}"
        async with httpx.AsyncClient() as http:
            for _ in range(100):  # until the page has the receiver's refusal to show
                status = (await http.get(f"{base}/api/v1/status")).json()
                if status["receiver"]["last_answer"] and status["tempo"]["last_answer"]:
                    break
                await asyncio.sleep(0.05)
            metrics = (await http.get(f"{base}/metrics")).text
            page = (await http.get(f"{base}/")).text
            status_json = (await http.get(f"{base}/api/v1/status")).text
    finally:
        daemon.stop()
        await task
        await tempo.stop()
        await runner.cleanup()
        configure("info")

    # the secrets went where they belong
    assert tempo.requests[0].header("Authorization") == f"Bearer {TEMPO_TOKEN}"
    assert seen_auth[0].startswith("Basic ")
    assert seen_query[0] == f"token={URL_TOKEN}"
    # and nowhere else: the receiver's refusal was logged, with its body, without them
    text = logs.getvalue()
    events = [json.loads(line) for line in text.splitlines()]
    assert any(e["event"] == "remote write rejected" and "bad credentials" in e["error"]
               for e in events)
    # the page and the JSON show the receiver's refusal and the URLs, not the credentials
    assert "bad credentials" in page
    assert f"127.0.0.1:{port}/api/v1/write?..." in page
    assert json.loads(status_json)["receiver"]["last_answer"]["status"] == 401
    for secret in (TEMPO_TOKEN, RW_PASSWORD, seen_auth[0].split()[1], URL_TOKEN):
        assert secret not in text
        assert secret not in metrics
        assert secret not in page
        assert secret not in status_json
