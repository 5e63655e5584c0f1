"""The status page as a person sees it: Debian's chromium renders ``/`` of a running daemon.

The daemon (``tests/statuspage_demo.py``) runs the shipped rules and more against the Tempo
double, with markup planted in a group name, a label value, an expression, Tempo's error, the
receiver's error and a reload's error; the receiver refuses every request. Its clock stands
still: once the rules have caught up, no window becomes due, so the page's numbers hold
still while chromium reads them.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from bridge.statuspage import rule_anchor
from tests.support import chromium
from tests.support.dom import parse
from tests.support.statuspage_demo import (
    EXPR_MARKUP,
    HOSTILE_GROUP,
    HOSTILE_RULE,
    LABEL_SCRIPT,
    RECEIVER_SCRIPT,
    RELOAD_MARKUP,
    TEMPO_SCRIPT,
    Demo,
    break_hostile_rules,
    running,
    screenshot,
)

PHONE = (360, 740)


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[Demo]:
    now = time.time()
    async with running(tmp_path, hostile=True, receiver_status=503, clock=lambda: now) as demo:
        state = demo.daemon.state
        deadline = time.monotonic() + 30
        # the sender counts the outbox at every retry: wait for a count after the last commit
        while (demo.status().outbox_samples != state.outbox_samples()
               or demo.status().receiver is None):
            assert time.monotonic() < deadline, "the sender never counted the outbox"
            await asyncio.sleep(0.1)
        async with httpx.AsyncClient() as http:
            break_hostile_rules(demo)
            assert (await http.post(demo.url + "-/reload")).status_code == 400
        yield demo


async def test_the_page_shows_every_rule_the_problems_and_markup_as_text(demo: Demo) -> None:
    status = demo.status()
    dom = parse(await chromium.dump_dom(demo.url))
    # markup from outside is text: no element made of it, and nothing runs
    assert not dom.tags() & {"script", "img", "i", "b"}
    page = dom.text()
    for planted in (TEMPO_SCRIPT, LABEL_SCRIPT, EXPR_MARKUP, RECEIVER_SCRIPT, RELOAD_MARKUP,
                    HOSTILE_GROUP):
        assert planted in page, planted

    header = dom.by_id("summary").words()
    assert "5 problems" in header
    assert f"{HOSTILE_GROUP} / {HOSTILE_RULE} is failing: http_400" in header
    assert "openrouter-latency / openrouter_requests_per_key_total is failing: limit" in header
    assert "receiver answered 503" in header
    assert "the last reload failed" in header
    # new samples may have come while the sender first counted the outbox, or not
    assert re.search(r"outbox (growing|not draining): [0-9,]+ samples waiting", header)
    assert "10 rules in 3 groups: 8 ok · 2 failing" in header

    # every rule of every group, with its health, checkpoint and last evaluation
    for group in status.groups:
        section = dom.by_id(f"group-{quote(group.name, safe='')}")
        assert section.words().startswith(group.name)
        for rule in group.rules:
            row = dom.by_id(rule_anchor(group, rule)).words()
            assert row.startswith(f"{rule.record} {rule.kind}"), row
            failing = rule.record in (HOSTILE_RULE, "openrouter_requests_per_key_total")
            assert ("failing" if failing else "ok") in row
            assert rule.last is not None
            assert f"{rule.last.series} series" in row
            assert rule.checkpoint is not None
            assert time.strftime("%H:%M:%S UTC", time.gmtime(rule.checkpoint)) in row
            assert f"{rule.windows_behind} window" in row

    hostile_group = next(g for g in status.groups if g.name == HOSTILE_GROUP)
    (hostile,) = hostile_group.rules
    hostile_row = dom.by_id(rule_anchor(hostile_group, hostile)).text()
    assert f'note="{LABEL_SCRIPT}"' in hostile_row
    assert EXPR_MARKUP in hostile_row
    # the error is in the row after the rule's, in a <pre>, verbatim
    errors = [n for n in dom.walk() if n.tag == "tr" and "error-row" in n.attrs.get("class", "")]
    assert hostile.last is not None
    assert hostile.last.error is not None
    assert TEMPO_SCRIPT in hostile.last.error
    shown = [n for e in errors for n in e.walk() if n.tag == "pre"]
    assert hostile.last.error in [pre.text() for pre in shown]

    outbox = dom.by_id("outbox").definitions()
    depth = demo.daemon.state.outbox_samples()
    assert depth > 0
    assert status.outbox_samples == depth
    assert outbox["Samples waiting"] == f"{depth:,} counted 0 s ago"
    oldest = demo.daemon.state.outbox_oldest_ts_ms()
    assert oldest is not None
    age = int(status.outbox_oldest_age)
    assert age == int(demo.daemon.status.snapshot().outbox_updated or 0) - oldest // 1000
    assert outbox["Oldest sample"] == f"{age // 60} m {age % 60} s old"
    assert re.fullmatch(r"(growing|waiting) samples wait since 0 s ago \([0-9,]+ then\)",
                        outbox["State"])
    assert outbox["Sender"] == "running"
    assert outbox["Receiver"] == status.receiver_url
    assert outbox["Last answer"].startswith("503 0 s ago POST ")
    assert outbox["Last answer"].endswith(f"HTTP 503: service unavailable {RECEIVER_SCRIPT}")

    tempo = dom.by_id("tempo").definitions()
    assert status.tempo is not None
    assert tempo["URL"] == status.tempo_url
    if status.tempo.ok:
        assert tempo["Last answer"] == "reachable answered 0 s ago"
    else:  # the hostile rule's query was the last to reach Tempo
        assert tempo["Last answer"].startswith("error 0 s ago · reason http_400")
        assert TEMPO_SCRIPT in tempo["Last answer"]

    reload = dom.by_id("reload").words()
    assert f"interval: '{RELOAD_MARKUP}' is not a duration" in reload


async def test_on_a_phone_the_page_is_one_column_without_sideways_scrolling(
    demo: Demo, tmp_path: Path,
) -> None:
    width, height = PHONE
    async with chromium.tab(width=width, height=height, mobile=True) as tab:
        await tab.goto(demo.url)
        scroll, client = await tab.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        assert (scroll, client) == (width, width)
        # one column: the rules' table cells stack, the two cards too
        cells = await tab.evaluate(
            "[...document.querySelectorAll('tr[id^=rule-] td')].map(td => "
            "[getComputedStyle(td).display, Math.round(td.getBoundingClientRect().left)])")
        assert len(cells) == 5 * 10
        assert "table-cell" not in {display for display, _ in cells}
        assert len({left for _, left in cells}) == 1
        lefts = await tab.evaluate(
            "['outbox', 'tempo'].map(id => document.getElementById(id)"
            ".getBoundingClientRect().left)")
        assert lefts[0] == lefts[1]
        # what a person reads on it (innerText: as laid out, closed <details> left out)
        text = await tab.evaluate("document.body.innerText")
        assert TEMPO_SCRIPT in text
        assert "Samples waiting" in text
        png = tmp_path / "phone.png"
        await tab.screenshot(png)
        assert chromium.png_size(png) == PHONE
        # the check can fail: a wide element makes the page scroll sideways
        await tab.evaluate(
            "document.body.insertAdjacentHTML('beforeend', '<div style=\"width:900px\">x</div>')")
        assert await tab.evaluate("document.documentElement.scrollWidth") > width


async def test_the_screenshot_helper_captures_the_whole_page(demo: Demo, tmp_path: Path) -> None:
    png = tmp_path / "page.png"
    await screenshot(demo, png, width=1280)
    width, height = chromium.png_size(png)
    assert width == 1280
    assert height > 900  # three groups, the outbox and Tempo: longer than one screen
