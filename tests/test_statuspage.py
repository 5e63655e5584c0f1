"""Status page rendering: every field shown, markup shown as text, problems first, the JSON's
shape, and the two endpoints."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from prometheus_client import CollectorRegistry

from bridge.status import (
    ReceiverAnswer,
    RuleStatus,
    Status,
    StatusBoard,
    TempoContact,
)
from bridge.statuspage import ago, document, problems, render, rfc3339, rule_anchor
from bridge.web import WebServer
from tests.support.dom import Node, parse
from tests.support.status import (
    CHECKPOINT,
    FAILED_RUN,
    NOW,
    OK_RUN,
    PLANTED,
    healthy,
    hostile,
)


def page(status: Status, refresh: int = 10) -> Node:
    return parse(render(status, NOW, refresh))


def row(dom: Node, status: Status, index: int) -> str:
    group = status.groups[0]
    return dom.by_id(rule_anchor(group, group.rules[index])).words()


def test_markup_in_any_text_is_shown_as_text() -> None:
    html = render(hostile(), NOW)
    assert "<script" not in html.lower()
    dom = parse(html)
    assert not dom.tags() & {"script", "img", "b", "i"}
    text = dom.text()
    for name, planted in PLANTED.items():
        assert planted in text, name


def test_the_header_shows_version_uptime_config_and_last_reload() -> None:
    (header_node,) = [n for n in page(hostile()).walk() if n.tag == "header"]
    header = header_node.definitions()
    assert header["Up"] == "1 h 2 m since 19:00:00 UTC"
    assert header["Config"] == PLANTED["config"]
    assert header["Last reload"] == "failed 1 m 0 s ago"
    assert header["Page"] == "refreshes every 10 s · stop"
    assert header_node.words().startswith("tempo-bridge 0.1.0 JSON metrics")


def test_each_rule_shows_kind_health_checkpoint_evaluation_settle_and_error() -> None:
    status = hostile()
    dom = page(status)
    ok = row(dom, status, 0)
    assert ok.startswith(f'ok_total counter team="{PLANTED["label"]}" TraceQL {PLANTED["expr"]}')
    assert "ok 20:00:00 UTC 0 windows behind" in ok
    assert "12 s ago, took 35 ms 9 series · 3 windows · queries: 2 instant, 1 range" in ok
    assert ok.endswith("10m: 19:50:00 UTC 1h: not yet")

    failing = row(dom, status, 1)
    assert failing.startswith(f"{PLANTED['record']} counter")
    assert "failing 19:55:00 UTC 5 windows behind" in failing
    assert "3 s ago, took 1.2 s 0 series · 0 windows · queries: 1 instant" in failing
    (error_row,) = [n for n in dom.walk() if n.attrs.get("class") == "error-row"]
    assert error_row.words() == f"Error 3 s ago · reason http_500 {PLANTED['tempo']}"
    (pre,) = [n for n in error_row.walk() if n.tag == "pre"]
    assert pre.text() == PLANTED["tempo"]  # verbatim

    pending = row(dom, status, 2)
    assert pending == ("biggest gauge TraceQL { } | max_over_time(span.cost) pending "
                       "nothing recorded yet not yet gauges are not read again")


def test_a_failing_rules_query_is_open_and_a_resolved_error_stays_in_view() -> None:
    status = hostile()
    rules = status.groups[0].rules
    details = [n for n in page(status).walk() if n.tag == "details"]
    assert ["open" in d.attrs for d in details] == [False, True, False]
    rules[1].last = OK_RUN  # it succeeded since
    dom = page(status)
    (error_row,) = [n for n in dom.walk() if "error-row" in n.attrs.get("class", "")]
    assert error_row.attrs["class"] == "error-row resolved"
    assert error_row.words().startswith("Last error, since resolved 3 s ago")


def test_the_group_shows_its_settings() -> None:
    status = hostile()
    section = page(status).by_id("group-" + quote(PLANTED["group"], safe=""))
    text = section.words()
    assert text.startswith(
        f"{PLANTED['group']} rules/openrouter.yaml · every 1m · query offset 2m · "
        f"settle 10m, 1h · tenant {PLANTED['tenant']} · source=\"{PLANTED['label']}\"")


def test_the_outbox_the_receiver_and_tempo() -> None:
    dom = page(hostile())
    outbox = dom.by_id("outbox").definitions()
    assert outbox == {
        "Samples waiting": "1,234 counted 1 s ago",
        "Oldest sample": "2 m 5 s old",
        "State": "growing samples wait since 40 s ago (1,000 then)",
        "Sender": "stopped no samples are sent",
        "Receiver": "http://127.0.0.1:9090/api/v1/write",
        "Last answer": f"503 4 s ago {PLANTED['receiver']}",
    }
    tempo = dom.by_id("tempo").definitions()
    assert tempo == {
        "URL": "http://127.0.0.1:3200",
        "Last answer": f"unreachable 2 s ago · reason network {PLANTED['unreachable']}",
    }
    healthy_page = page(healthy())
    assert healthy_page.by_id("outbox").definitions()["State"] == "empty"
    assert healthy_page.by_id("outbox").definitions()["Last answer"] == "204 5 s ago"
    assert healthy_page.by_id("tempo").definitions()["Last answer"] == (
        "reachable answered 12 s ago")


def test_problems_come_first_rules_before_tempo_receiver_outbox_reload_sender() -> None:
    status = hostile()
    assert [p.kind for p in problems(status, NOW)] == [
        "rule_failing", "tempo_unreachable", "receiver_failing", "outbox_growing",
        "reload_failed", "sender_stopped",
    ]
    dom = page(status)
    summary = dom.by_id("summary")
    items = [n.words() for n in summary.walk() if n.tag == "li"]
    assert items == [
        f"{PLANTED['group']} / {PLANTED['record']} is failing: http_500",
        "Tempo unreachable (network) 2 s ago",
        "receiver answered 503 4 s ago",
        "outbox growing: 1,234 samples waiting, up from 1,000 40 s ago",
        "the last reload failed 1 m 0 s ago; the previous rules keep running",
        "the sender is not running: no samples are sent",
    ]
    links = [n.attrs["href"] for n in summary.walk() if n.tag == "a"]
    for link in links:  # each leads to what tells more
        assert dom.by_id(link[1:])
    assert summary.words().startswith(
        "6 problems 3 rules in 1 group: 1 ok · 1 failing · 1 pending.")
    reload = dom.by_id("reload").words()
    assert reload.endswith(f"and its rule files say: {PLANTED['reload']}")
    title = next(n for n in dom.walk() if n.tag == "title").text()
    assert title == "tempo-bridge: 6 problems"


@pytest.mark.parametrize(
    ("change", "kind"),
    [
        ({"tempo": TempoContact(NOW, False, "Tempo answered 503: busy", "http_503")},
         "tempo_failing"),
        ({"tempo": TempoContact(NOW, False, "Tempo answered 400: bad", "http_400")}, None),
        ({"receiver": ReceiverAnswer(NOW, None, "connection refused")}, "receiver_failing"),
        ({"outbox_samples": 10, "outbox_waiting_since": NOW - 5, "outbox_waiting_samples": 10},
         "outbox_waiting"),
        ({"outbox_samples": 10}, None),  # counted while sending, not waiting
    ],
)
def test_which_answers_are_problems(change: dict[str, Any], kind: str | None) -> None:
    status = dataclasses.replace(healthy(), **change)
    assert [p.kind for p in problems(status, NOW)] == ([kind] if kind else [])


def test_a_healthy_bridge_says_so() -> None:
    dom = page(healthy())
    assert dom.by_id("summary").words() == "ok All is well. 1 rule in 1 group: 1 ok."
    assert next(n for n in dom.walk() if n.tag == "title").text() == "tempo-bridge: ok"
    assert not [n for n in dom.walk() if n.attrs.get("id") == "reload"]


def test_the_page_refreshes_itself_unless_told_not_to() -> None:
    def refresh(dom: Node) -> list[str]:
        return [n.attrs["content"] for n in dom.walk()
                if n.tag == "meta" and n.attrs.get("http-equiv") == "refresh"]

    assert refresh(page(healthy())) == ["10"]
    assert refresh(page(healthy(), refresh=30)) == ["30"]
    stopped = page(healthy(), refresh=0)
    assert refresh(stopped) == []
    header = next(n for n in stopped.walk() if n.tag == "header").definitions()
    assert header["Page"] == "not refreshing · refresh"
    viewport = [n.attrs["content"] for n in stopped.walk()
                if n.tag == "meta" and n.attrs.get("name") == "viewport"]
    assert viewport == ["width=device-width, initial-scale=1"]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0 s ago"), (12.9, "12 s ago"), (59, "59 s ago"), (60, "1 m 0 s ago"),
     (184, "3 m 4 s ago"), (7500, "2 h 5 m ago"), (3 * 86400 + 3700, "3 d 1 h ago"),
     (-2, "in 2 s")],
)
def test_times_ago(seconds: float, text: str) -> None:
    assert ago(seconds) == text


def test_rfc3339() -> None:
    assert rfc3339(NOW) == "2026-11-28T20:02:05Z"
    assert rfc3339(NOW + 0.25) == "2026-11-28T20:02:05.250Z"


def test_the_json_document() -> None:
    status = healthy()
    status.groups[0].rules.append(
        RuleStatus("y_total", "counter", "{ } | count_over_time()", {"team": "a"},
                   checkpoint=CHECKPOINT - 60, windows_behind=1, settle={600: CHECKPOINT - 600},
                   last=FAILED_RUN, last_error=FAILED_RUN))
    status.groups[0].rules.append(RuleStatus("biggest", "gauge", "{ } | max_over_time(span.x)"))

    def at(t: float) -> dict[str, Any]:
        return {"unix": t, "rfc3339": rfc3339(t)}

    ok = {"at": at(NOW - 12), "duration_seconds": 0.035, "series": 9, "windows": 3,
          "queries": {"range": 1, "instant": 2}, "error": None, "reason": None}
    failed = {"at": at(NOW - 3), "duration_seconds": 1.25, "series": 0, "windows": 0,
              "queries": {"instant": 1}, "error": PLANTED["tempo"], "reason": "http_500"}
    assert document(status, NOW) == {
        "version": "0.1.0",
        "generated": at(NOW),
        "started": at(NOW - 50),
        "uptime_seconds": 50.0,
        "config_file": "bridge.yaml",
        "last_reload": {"at": at(NOW - 50), "ok": True, "errors": None},
        "summary": {"groups": 1, "rules": 3, "ok": 1, "failing": 1, "pending": 1},
        "problems": [{"kind": "rule_failing", "message": "g / y_total is failing: http_500"}],
        "groups": [{
            "name": "g", "file": "rules.yaml", "interval_seconds": 60,
            "query_offset_seconds": 120, "settle_seconds": [600], "tenant": None, "labels": {},
            "rules": [
                {"record": "x_total", "kind": "counter", "expr": "{ } | count_over_time()",
                 "labels": {}, "health": "ok", "checkpoint": at(CHECKPOINT),
                 "windows_behind": 0,
                 "settle": [{"age_seconds": 600, "checkpoint": None}],
                 "last_evaluation": ok, "last_error": None},
                {"record": "y_total", "kind": "counter", "expr": "{ } | count_over_time()",
                 "labels": {"team": "a"}, "health": "failing",
                 "checkpoint": at(CHECKPOINT - 60), "windows_behind": 1,
                 "settle": [{"age_seconds": 600, "checkpoint": at(CHECKPOINT - 600)}],
                 "last_evaluation": failed, "last_error": failed},
                {"record": "biggest", "kind": "gauge", "expr": "{ } | max_over_time(span.x)",
                 "labels": {}, "health": "pending", "checkpoint": None, "windows_behind": 0,
                 "settle": [], "last_evaluation": None, "last_error": None},
            ],
        }],
        "outbox": {"samples": 0, "oldest_sample_age_seconds": 0.0, "counted": at(NOW - 1),
                   "waiting_since": None, "waiting_since_samples": 0},
        "sender": {"running": True},
        "receiver": {"url": "http://receiver/api/v1/write",
                     "last_answer": {"at": at(NOW - 5), "ok": True, "status": 204,
                                     "error": None}},
        "tempo": {"url": "http://tempo:3200",
                  "last_answer": {"at": at(NOW - 12), "ok": True, "reachable": True,
                                  "reason": None, "error": None}},
    }


def test_the_json_has_texts_as_they_are() -> None:
    doc = json.loads(json.dumps(document(hostile(), NOW)))
    assert doc["groups"][0]["name"] == PLANTED["group"]
    assert doc["groups"][0]["rules"][1]["last_error"]["error"] == PLANTED["tempo"]
    assert doc["last_reload"]["errors"] == PLANTED["reload"]
    assert doc["tempo"]["last_answer"] == {
        "at": {"unix": NOW - 2, "rfc3339": rfc3339(NOW - 2)}, "ok": False,
        "reachable": False, "reason": "network", "error": PLANTED["unreachable"]}
    assert [p["kind"] for p in doc["problems"]] == [p.kind for p in problems(hostile(), NOW)]


@pytest.fixture
async def server() -> AsyncIterator[httpx.AsyncClient]:
    board = StatusBoard(hostile())

    async def reload() -> str | None:
        return None

    web = WebServer(CollectorRegistry(), reload, lambda: True, board.snapshot,
                    clock=lambda: NOW)
    await web.start("127.0.0.1:0")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{web.port}") as http:
        yield http
    await web.stop()


async def test_the_endpoints(server: httpx.AsyncClient) -> None:
    answer = await server.get("/")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "text/html; charset=utf-8"
    assert answer.headers["Content-Security-Policy"].startswith("default-src 'none';")
    assert answer.text == render(hostile(), NOW)
    assert (await server.get("/?refresh=0")).text == render(hostile(), NOW, 0)
    for bad in ("-1", "x", "1.5", "86401", "²"):
        refused = await server.get("/", params={"refresh": bad})
        assert refused.status_code == 400
        assert refused.text == (
            "refresh must be a whole number of seconds from 0 (never) to 86400, "
            f"not {bad!r}\n")
    api = await server.get("/api/v1/status")
    assert api.status_code == 200
    assert api.headers["Content-Type"] == "application/json; charset=utf-8"
    assert api.json() == json.loads(json.dumps(document(hostile(), NOW)))
