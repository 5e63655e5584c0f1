"""Secrets: read from files, sent where they belong, never in logs, metrics, errors, output
or the status page and its JSON."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import httpx

from bridge.config import load_config
from bridge.logs import configure
from tests.doubles.tempo import Span, TempoDouble
from tests.support.daemon import make_daemon, running
from tests.support.files import Rule, write_config, write_rules
from tests.support.servers import eventually, receiving, serving

TEMPO_TOKEN = "tempo-s3cret-token-4f1c"
RW_PASSWORD = "rw-pa55word-9a7e"
URL_TOKEN = "url-t0ken-5b2d"  # some receivers take a token in the URL's query
COUNT = '{ resource.service.name = "svc" } | count_over_time() by (span.model)'


async def test_secrets_are_used_but_never_shown(tmp_path: Path) -> None:
    now = time.time()
    tempo = TempoDouble(
        [Span(start_ns=int((now - 2 + i / 10) * 1e9), attributes={"model": "m"},
              resource={"service.name": "svc"}) for i in range(40)],
        query_end_cutoff=0,
    )
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "tempo-token").write_text(TEMPO_TOKEN + "\n")
    (credentials / "rw-password").write_text(RW_PASSWORD)
    environ = {"CREDENTIALS_DIRECTORY": str(credentials)}
    write_rules(tmp_path / "rules.yaml", Rule("requests_total", COUNT))
    logs = io.StringIO()
    configure("debug", stream=logs)
    try:
        async with serving(tempo) as tempo_url, \
                receiving(status=401, text="bad credentials\n") as receiver:
            config_path = write_config(
                tmp_path, tempo_url, f"{receiver.url}?token={URL_TOKEN}",
                tempo={"bearer_token_file": "tempo-token"},
                remote_write={"basic_auth": {"username": "bridge",
                                             "password_file": "rw-password"}},
                log_level="debug",
            )
            config = load_config(config_path, environ)
            assert TEMPO_TOKEN not in repr(config)
            assert RW_PASSWORD not in repr(config)
            assert TEMPO_TOKEN not in str(config.model_dump())
            async with running(make_daemon(config_path, environ)) as daemon:
                await eventually(lambda: "remote write rejected" in logs.getvalue(),
                                 "the receiver's refusal in the log")
                base = f"http://127.0.0.1:{daemon.web.port}"
                async with httpx.AsyncClient() as http:

                    async def answered() -> bool:
                        status = (await http.get(f"{base}/api/v1/status")).json()
                        return bool(status["receiver"]["last_answer"]
                                    and status["tempo"]["last_answer"])

                    await eventually(answered, "the status page shows both answers")
                    metrics = (await http.get(f"{base}/metrics")).text
                    page = (await http.get(f"{base}/")).text
                    status_json = (await http.get(f"{base}/api/v1/status")).text
    finally:
        configure("info")
    seen_auth = [write.headers.get("Authorization", "") for write in receiver.requests]

    # the secrets went where they belong
    assert tempo.requests[0].header("Authorization") == f"Bearer {TEMPO_TOKEN}"
    assert seen_auth[0].startswith("Basic ")
    assert receiver.requests[0].query == f"token={URL_TOKEN}"
    # and nowhere else: the receiver's refusal was logged, with its body, without them
    text = logs.getvalue()
    events = [json.loads(line) for line in text.splitlines()]
    assert any(e["event"] == "remote write rejected" and "bad credentials" in e["error"]
               for e in events)
    # the page and the JSON show the receiver's refusal and the URLs, not the credentials
    assert "bad credentials" in page
    assert f"{receiver.url}?..." in page
    assert json.loads(status_json)["receiver"]["last_answer"]["status"] == 401
    for secret in (TEMPO_TOKEN, RW_PASSWORD, seen_auth[0].split()[1], URL_TOKEN):
        assert secret not in text
        assert secret not in metrics
        assert secret not in page
        assert secret not in status_json
