"""Status page: a :class:`~bridge.status.Status` as the HTML of ``/`` and the JSON of
``/api/v1/status``.

Both show the same data: the problems first (failing rules, Tempo, the receiver, the
outbox, the last reload, the sender), then each group's rules, the outbox and receiver,
and Tempo. The HTML is rendered on the server and needs no JavaScript; every text in it
goes through :func:`html.escape`, so a rule name, a label value or an error that holds
markup is shown as text. The status holds nothing secret (see :mod:`bridge.status`).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote

from bridge.durations import format_duration
from bridge.status import Evaluation, GroupStatus, RuleStatus, Status

DEFAULT_REFRESH = 10
"""Seconds between reloads of the page by the browser (``?refresh=0`` stops them)."""

Health = Literal["ok", "failing", "pending"]
"""``ok``: the last evaluation succeeded; ``failing``: it failed; ``pending``: none yet."""


@dataclass(frozen=True)
class Problem:
    """Something an operator should look at, in the order the page lists them."""

    kind: str
    """``rule_failing``, ``tempo_unreachable``, ``tempo_failing``, ``receiver_failing``,
    ``outbox_growing``, ``outbox_waiting``, ``reload_failed`` or ``sender_stopped``."""
    message: str
    anchor: str
    """The id of the page's section or rule row that tells more."""


def health(rule: RuleStatus) -> Health:
    if rule.last is None:
        return "pending"
    return "ok" if rule.last.error is None else "failing"


def problems(status: Status, now: float) -> list[Problem]:
    """What is wrong, in the order the page lists it: failing rules, Tempo, the receiver,
    the outbox, the last reload, the sender. Empty when all is well."""
    found = [
        Problem("rule_failing",
                f"{g.name} / {r.record} is failing: {r.last.reason or 'error'}",
                rule_anchor(g, r))
        for g in status.groups for r in g.rules
        if r.last is not None and r.last.error is not None
    ]
    tempo = status.tempo
    if tempo is not None and not tempo.ok:
        if not tempo.reachable:
            found.append(Problem(
                "tempo_unreachable",
                f"Tempo unreachable ({tempo.reason}) {ago(now - tempo.at)}", "tempo"))
        elif tempo.reason is not None and (
                tempo.reason.startswith("http_5") or tempo.reason == "http_429"):
            found.append(Problem(
                "tempo_failing", f"Tempo failing ({tempo.reason}) {ago(now - tempo.at)}",
                "tempo"))
    receiver = status.receiver
    if receiver is not None and not _receiver_ok(receiver.status):
        what = "unreachable" if receiver.status is None else f"answered {receiver.status}"
        found.append(Problem(
            "receiver_failing", f"receiver {what} {ago(now - receiver.at)}", "outbox"))
    since = status.outbox_waiting_since
    if since is not None and status.outbox_samples:
        samples = _count(status.outbox_samples, "sample")
        if status.outbox_samples > status.outbox_waiting_samples:
            found.append(Problem(
                "outbox_growing",
                f"outbox growing: {samples} waiting, up from "
                f"{_thousands(status.outbox_waiting_samples)} {ago(now - since)}", "outbox"))
        else:
            found.append(Problem(
                "outbox_waiting",
                f"outbox not draining: {samples} waiting since {ago(now - since)}", "outbox"))
    reload = status.last_reload
    if reload is not None and not reload.ok:
        found.append(Problem(
            "reload_failed",
            f"the last reload failed {ago(now - reload.at)}; the previous rules keep running",
            "reload"))
    if not status.sender_alive:
        found.append(Problem(
            "sender_stopped", "the sender is not running: no samples are sent", "outbox"))
    return found


def rule_anchor(group: GroupStatus, rule: RuleStatus) -> str:
    """The id of a rule's row: its group and record, percent-encoded (safe in ids and hrefs)."""
    return "rule-" + quote(f"{group.name}/{rule.record}", safe="")


# -- JSON ------------------------------------------------------------------------------------


def document(status: Status, now: float) -> dict[str, Any]:
    """The JSON of ``/api/v1/status``: field names are stable, times are
    ``{"unix": seconds, "rfc3339": "...Z"}`` or null."""
    rules = [(g, r) for g in status.groups for r in g.rules]
    healths = [health(r) for _, r in rules]
    reload = status.last_reload
    receiver = status.receiver
    tempo = status.tempo
    return {
        "version": status.version,
        "generated": _time(now),
        "started": _time(status.started),
        "uptime_seconds": max(now - status.started, 0.0),
        "config_file": status.config_file,
        "last_reload": None if reload is None else {
            "at": _time(reload.at), "ok": reload.ok, "errors": reload.errors,
        },
        "summary": {
            "groups": len(status.groups), "rules": len(rules),
            **{h: healths.count(h) for h in ("ok", "failing", "pending")},
        },
        "problems": [
            {"kind": p.kind, "message": p.message} for p in problems(status, now)
        ],
        "groups": [_group_document(g) for g in status.groups],
        "outbox": {
            "samples": status.outbox_samples,
            "oldest_sample_age_seconds": status.outbox_oldest_age,
            "counted": _time(status.outbox_updated),
            "waiting_since": _time(status.outbox_waiting_since),
            "waiting_since_samples": status.outbox_waiting_samples,
        },
        "sender": {"running": status.sender_alive},
        "receiver": {
            "url": status.receiver_url,
            "last_answer": None if receiver is None else {
                "at": _time(receiver.at), "ok": _receiver_ok(receiver.status),
                "status": receiver.status, "error": receiver.error,
            },
        },
        "tempo": {
            "url": status.tempo_url,
            "last_answer": None if tempo is None else {
                "at": _time(tempo.at), "ok": tempo.ok, "reachable": tempo.reachable,
                "reason": tempo.reason, "error": tempo.error,
            },
        },
    }


def _group_document(group: GroupStatus) -> dict[str, Any]:
    return {
        "name": group.name,
        "file": group.file,
        "interval_seconds": group.interval,
        "query_offset_seconds": group.query_offset,
        "settle_seconds": list(group.settle),
        "tenant": group.tenant,
        "labels": dict(group.labels),
        "rules": [
            {
                "record": r.record,
                "kind": r.kind,
                "expr": r.expr,
                "labels": dict(r.labels),
                "health": health(r),
                "checkpoint": _time(r.checkpoint),
                "windows_behind": r.windows_behind,
                "settle": [
                    {"age_seconds": age, "checkpoint": _time(r.settle.get(age))}
                    for age in _settle_ages(group, r)
                ],
                "last_evaluation": _evaluation_document(r.last),
                "last_error": _evaluation_document(r.last_error),
            }
            for r in group.rules
        ],
    }


def _settle_ages(group: GroupStatus, rule: RuleStatus) -> tuple[int, ...]:
    """The ages at which the rule's windows are read again: only counters' are."""
    return group.settle if rule.kind == "counter" else ()


def _evaluation_document(evaluation: Evaluation | None) -> dict[str, Any] | None:
    if evaluation is None:
        return None
    return {
        "at": _time(evaluation.at),
        "duration_seconds": evaluation.duration,
        "series": evaluation.series,
        "windows": evaluation.windows,
        "queries": dict(evaluation.queries),
        "error": evaluation.error,
        "reason": evaluation.reason,
    }


def _time(at: float | None) -> dict[str, Any] | None:
    if at is None:
        return None
    return {"unix": at, "rfc3339": rfc3339(at)}


def rfc3339(at: float) -> str:
    """``2026-01-02T03:04:05Z`` (milliseconds when ``at`` has a fraction)."""
    spec = "seconds" if float(at).is_integer() else "milliseconds"
    return datetime.fromtimestamp(at, UTC).isoformat(timespec=spec).replace("+00:00", "Z")


# -- HTML ------------------------------------------------------------------------------------


def render(status: Status, now: float, refresh: int = DEFAULT_REFRESH) -> str:
    """The page; the browser reloads it every ``refresh`` seconds (0: never)."""
    parts = [
        "<!DOCTYPE html>\n<html lang=en>\n<head>\n<meta charset=utf-8>\n",
        '<meta name=viewport content="width=device-width, initial-scale=1">\n',
        f'<meta http-equiv=refresh content="{refresh}">\n' if refresh else "",
        f"<title>{_e(_title(status, now))}</title>\n",
        f"<style>{_CSS}</style>\n</head>\n<body>\n",
        _header(status, now, refresh),
        "<main>\n",
        _summary(status, now),
        _reload(status, now),
        *(_group(g, now) for g in status.groups),
        '<div class=pair>\n', _outbox(status, now), _tempo(status, now), "</div>\n",
        "</main>\n",
        f"<footer>tempo-bridge {_e(status.version)} · rendered {_abs(now, now)} · "
        '<a href="api/v1/status">this page as JSON</a></footer>\n',
        "</body>\n</html>\n",
    ]
    return "".join(parts)


def _title(status: Status, now: float) -> str:
    count = len(problems(status, now))
    return f"tempo-bridge: {_count(count, 'problem')}" if count else "tempo-bridge: ok"


def _header(status: Status, now: float, refresh: int) -> str:
    reload = status.last_reload
    if reload is None:
        reloaded = "not yet"
    else:
        state = _badge("ok", "ok") if reload.ok else _badge("failed", "failing")
        reloaded = f'{state} {_when(reload.at, now)}'
    if refresh:
        refreshing = (f'refreshes every {refresh} s · <a href="?refresh=0">stop</a>')
    else:
        refreshing = f'not refreshing · <a href="?refresh={DEFAULT_REFRESH}">refresh</a>'
    return (
        '<header>\n<div class=bar><span class=brand>tempo-bridge</span>'
        f' <span class=version>{_e(status.version)}</span>'
        '<nav><a href="api/v1/status">JSON</a> <a href="metrics">metrics</a></nav></div>\n'
        "<dl class=meta>"
        f"<div><dt>Up</dt><dd>{_span(now - status.started)} "
        f"<small>since {_abs(status.started, now)}</small></dd></div>"
        f"<div><dt>Config</dt><dd><code>{_e(status.config_file)}</code></dd></div>"
        f"<div><dt>Last reload</dt><dd>{reloaded}</dd></div>"
        f"<div><dt>Page</dt><dd>{refreshing}</dd></div>"
        "</dl>\n</header>\n"
    )


def _summary(status: Status, now: float) -> str:
    found = problems(status, now)
    rules = [r for g in status.groups for r in g.rules]
    healths = [health(r) for r in rules]
    counts = " · ".join(
        f"{healths.count(h)} {h}" for h in ("ok", "failing", "pending") if healths.count(h)
    )
    total = (f"{_count(len(rules), 'rule')} in {_count(len(status.groups), 'group')}"
             + (f": {counts}" if counts else ""))
    if not found:
        return (f'<section class="summary good" id=summary><p>{_badge("ok", "ok")} '
                f"All is well. {_e(total)}.</p></section>\n")
    items = "".join(
        f'<li><a href="#{p.anchor}">{_e(p.message)}</a></li>' for p in found
    )
    badge = _badge(_count(len(found), "problem"), "failing")
    return (f'<section class="summary bad" id=summary><p>{badge} {_e(total)}.</p>'
            f"<ul>{items}</ul></section>\n")


def _reload(status: Status, now: float) -> str:
    reload = status.last_reload
    if reload is None or reload.ok:
        return ""
    return (
        '<section class=card id=reload><h2>Last reload failed</h2>'
        f"<p>{_when(reload.at, now)}; the previous rules keep running. "
        f"<code>{_e(status.config_file)}</code> and its rule files say:</p>"
        f"<pre class=error>{_e(reload.errors or '')}</pre></section>\n"
    )


def _group(group: GroupStatus, now: float) -> str:
    facts = [
        f"<code>{_e(group.file)}</code>",
        f"every {_e(format_duration(group.interval))}",
        f"query offset {_e(format_duration(group.query_offset))}",
        "settle " + (", ".join(_e(format_duration(a)) for a in group.settle) or "none"),
    ]
    if group.tenant is not None:
        facts.append(f"tenant <code>{_e(group.tenant)}</code>")
    if group.labels:
        facts.append(_labels(group.labels))
    rows = "".join(_rule(group, r, now) for r in group.rules)
    return (
        f'<section class=group id="group-{_e(quote(group.name, safe=""))}">'
        f"<h2>{_e(group.name)}</h2><p class=facts>{' · '.join(facts)}</p>\n"
        "<table><thead><tr><th>Rule</th><th>Health</th><th>Data complete up to</th>"
        "<th>Last evaluation</th><th>Settled up to</th></tr></thead>\n"
        f"<tbody>\n{rows}</tbody></table></section>\n"
    )


def _rule(group: GroupStatus, rule: RuleStatus, now: float) -> str:
    state = health(rule)
    anchor = rule_anchor(group, rule)
    labels = f" {_labels(rule.labels)}" if rule.labels else ""
    opened = " open" if state == "failing" else ""
    name = (
        f'<strong class=record>{_e(rule.record)}</strong> <span class=kind>{_e(rule.kind)}</span>'
        f"{labels}<details{opened}><summary>TraceQL</summary>"
        f"<pre>{_e(rule.expr)}</pre></details>"
    )
    if rule.checkpoint is None:
        complete = "<span class=muted>nothing recorded yet</span>"
    else:
        behind = rule.windows_behind
        cls = "behind" if behind else "muted"
        complete = (f'{_abs(rule.checkpoint, now)} <small class="sub {cls}">'
                    f"{_e(_count(behind, 'window'))} behind</small>")
    last = rule.last
    if last is None:
        evaluation = "<span class=muted>not yet</span>"
    else:
        queries = ", ".join(f"{n} {_e(kind)}" for kind, n in sorted(last.queries.items()))
        evaluation = (
            f"{_when(last.at, now)}, took {_e(_duration(last.duration))} <small class=sub>"
            f"{_e(_count(last.series, 'series', 'series'))} · "
            f"{_e(_count(last.windows, 'window'))} · "
            f"{'queries: ' + queries if queries else 'no query due'}</small>"
        )
    settled = "".join(
        f"<span class=settle><small>{_e(format_duration(age))}:</small> "
        + (_abs(rule.settle[age], now) if age in rule.settle
           else "<span class=muted>not yet</span>")
        + "</span> "
        for age in _settle_ages(group, rule)
    ) or ("<span class=muted>gauges are not read again</span>" if rule.kind == "gauge"
          else "<span class=muted>no settle ages</span>")
    # each cell's content in one <div>: on a phone the cell is a line, its label beside it
    row = (
        f'<tr id="{anchor}" class="{state}">'
        f'<td data-label="Rule"><div>{name}</div></td>'
        f'<td data-label="Health"><div>{_badge(state, state)}</div></td>'
        f'<td data-label="Complete up to"><div>{complete}</div></td>'
        f'<td data-label="Last evaluation"><div>{evaluation}</div></td>'
        f'<td data-label="Settled up to"><div>{settled}</div></td></tr>\n'
    )
    error = rule.last_error
    if error is None:
        return row
    resolved = state != "failing"
    heading = "Last error, since resolved" if resolved else "Error"
    return row + (
        f'<tr class="error-row{" resolved" if resolved else ""}"><td colspan=5>'
        f"<p>{heading} {_when(error.at, now)}"
        f" · reason <code>{_e(error.reason or 'unknown')}</code></p>"
        f"<pre class=error>{_e(error.error or '')}</pre></td></tr>\n"
    )


def _outbox(status: Status, now: float) -> str:
    samples = status.outbox_samples
    since = status.outbox_waiting_since
    if since is not None and samples:
        grown = samples > status.outbox_waiting_samples
        state = (f"{_badge('growing' if grown else 'waiting', 'failing')} "
                 f"samples wait since {_when(since, now)} "
                 f"({_e(_thousands(status.outbox_waiting_samples))} then)")
    elif samples:
        state = _badge("sending", "pending")
    else:
        state = _badge("empty", "ok")
    counted = ("" if status.outbox_updated is None
               else f" <small>counted {_when(status.outbox_updated, now)}</small>")
    oldest = (f"{_e(_span(status.outbox_oldest_age))} old" if samples
              else "<span class=muted>none</span>")
    sender = (_badge("running", "ok") if status.sender_alive
              else _badge("stopped", "failing") + " no samples are sent")
    receiver = status.receiver
    if receiver is None:
        answer = "<span class=muted>nothing sent yet</span>"
    else:
        ok = _receiver_ok(receiver.status)
        label = "unreachable" if receiver.status is None else str(receiver.status)
        answer = f"{_badge(label, 'ok' if ok else 'failing')} {_when(receiver.at, now)}"
        if receiver.error:
            answer += f"<pre class=error>{_e(receiver.error)}</pre>"
    return (
        "<section class=card id=outbox><h2>Outbox and receiver</h2><dl class=kv>"
        f"<dt>Samples waiting</dt><dd><span class=num>{_e(_thousands(samples))}</span>"
        f"{counted}</dd>"
        f"<dt>Oldest sample</dt><dd>{oldest}</dd>"
        f"<dt>State</dt><dd>{state}</dd>"
        f"<dt>Sender</dt><dd>{sender}</dd>"
        f"<dt>Receiver</dt><dd><code>{_e(status.receiver_url)}</code></dd>"
        f"<dt>Last answer</dt><dd>{answer}</dd>"
        "</dl></section>\n"
    )


def _tempo(status: Status, now: float) -> str:
    tempo = status.tempo
    if tempo is None:
        answer = "<span class=muted>not asked yet</span>"
    elif tempo.ok:
        answer = f"{_badge('reachable', 'ok')} answered {_when(tempo.at, now)}"
    else:
        label = "unreachable" if not tempo.reachable else "error"
        answer = (
            f"{_badge(label, 'failing')} {_when(tempo.at, now)}"
            f" · reason <code>{_e(tempo.reason or 'unknown')}</code>"
            f"<pre class=error>{_e(tempo.error or '')}</pre>"
        )
    return (
        "<section class=card id=tempo><h2>Tempo</h2><dl class=kv>"
        f"<dt>URL</dt><dd><code>{_e(status.tempo_url)}</code></dd>"
        f"<dt>Last answer</dt><dd>{answer}</dd>"
        "</dl></section>\n"
    )


# -- small pieces ----------------------------------------------------------------------------


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _badge(text: str, kind: str) -> str:
    return f'<span class="badge {kind}">{_e(text)}</span>'


def _labels(labels: dict[str, str]) -> str:
    return "".join(
        f'<span class=label>{_e(name)}="{_e(value)}"</span>'
        for name, value in sorted(labels.items())
    )


def _when(at: float, now: float) -> str:
    """``12 s ago`` with the absolute UTC time in a title, in a <time> element."""
    return (f'<time datetime="{_e(rfc3339(at))}" title="{_e(_utc(at))}">'
            f"{_e(ago(now - at))}</time>")


def _abs(at: float, now: float) -> str:
    """The absolute UTC time (without the date when it is today's), in a <time> element
    whose title has the date and how long ago."""
    shown = _utc(at)
    if shown[:10] == _utc(now)[:10]:
        shown = shown[11:]
    return (f'<time datetime="{_e(rfc3339(at))}" title="{_e(_utc(at))}, {_e(ago(now - at))}">'
            f"{_e(shown)}</time>")


def _utc(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def ago(seconds: float) -> str:
    """``12 s ago``, ``3 m 4 s ago``, ``2 h 5 m ago``, ``3 d 1 h ago`` (``in 2 s`` ahead)."""
    if seconds < 0:
        return f"in {_span(-seconds)}"
    return f"{_span(seconds)} ago"


def _span(seconds: float) -> str:
    """A length of time in its two largest units: ``45 s``, ``3 m 4 s``, ``2 d 1 h``."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, whole = divmod(whole, size)
        if count or parts:
            parts.append(f"{count} {unit}")
    return " ".join(parts[:2])


def _duration(seconds: float) -> str:
    """How long something took: ``35 ms``, ``1.2 s``, ``2 m 3 s``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    return _span(seconds)


def _thousands(n: int) -> str:
    return f"{n:,}"


def _count(n: int, singular: str, plural: str | None = None) -> str:
    return f"{n:,} {singular if n == 1 else plural or singular + 's'}"


def _receiver_ok(status: int | None) -> bool:
    return status is not None and 200 <= status < 300


_CSS = """
:root{--fg:#1f2328;--muted:#59636e;--bg:#f6f8fa;--card:#fff;--line:#d1d9e0;
--ok:#1a7f37;--okbg:#dafbe1;--bad:#cf222e;--badbg:#ffebe9;--wait:#9a6700;--waitbg:#fff8c5;
--code:#eff2f5;--bar:#24292f}
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--muted:#9198a1;--bg:#0d1117;
--card:#151b23;--line:#3d444d;--ok:#3fb950;--okbg:#12361f;--bad:#f85149;--badbg:#4a1518;
--wait:#d29922;--waitbg:#3b2e0a;--code:#212830;--bar:#010409}}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
color:var(--fg);background:var(--bg);overflow-wrap:anywhere}
a{color:inherit}
code,pre{font:12.5px/1.4 ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace}
code{background:var(--code);padding:0 3px;border-radius:3px}
pre{background:var(--code);padding:6px 8px;margin:4px 0 0;border-radius:4px;
white-space:pre-wrap;max-height:14em;overflow:auto}
pre.error{background:var(--badbg);border-left:3px solid var(--bad)}
header .bar{background:var(--bar);color:#fff;padding:10px 16px;display:flex;
align-items:baseline;gap:10px;flex-wrap:wrap}
.brand{font-weight:600;font-size:17px}.version{opacity:.75}
header nav{margin-left:auto;display:flex;gap:14px}header nav a{color:#fff}
dl.meta{margin:0;padding:8px 16px;display:flex;flex-wrap:wrap;gap:4px 28px;
background:var(--card);border-bottom:1px solid var(--line)}
dl.meta div{display:flex;gap:6px;align-items:baseline}
dl.meta dt{color:var(--muted)}dl.meta dd{margin:0}
main{max-width:1280px;margin:0 auto;padding:12px 16px 24px}
h2{font-size:16px;margin:0 0 4px}
.summary{border-radius:6px;padding:8px 12px;margin-bottom:14px;border:1px solid var(--line);
background:var(--card)}
.summary.bad{border-color:var(--bad)}.summary p{margin:0}
.summary ul{margin:6px 0 0;padding-left:20px}.summary li{margin:2px 0}
.group,.card{background:var(--card);border:1px solid var(--line);border-radius:6px;
padding:10px 12px;margin-bottom:14px}
.facts{margin:0 0 8px;color:var(--muted)}
table{border-collapse:collapse;width:100%}
th{text-align:left;font-weight:600;color:var(--muted);border-bottom:1px solid var(--line);
padding:4px 8px}
td{vertical-align:top;padding:6px 8px;border-top:1px solid var(--line)}
th:first-child,td:first-child{width:38%}
tr.error-row td{border-top:0;padding-top:0}
tr.error-row p{margin:0;color:var(--bad)}tr.error-row.resolved p{color:var(--muted)}
tr.error-row.resolved pre.error{background:var(--code);border-left-color:var(--line)}
.record{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,monospace;font-size:13.5px}
.kind{color:var(--muted);font-size:12px}
.label{display:inline-block;font:12px ui-monospace,"DejaVu Sans Mono",monospace;
background:var(--code);border-radius:10px;padding:0 7px;margin:2px 3px 0 0}
details{margin-top:2px}summary{cursor:pointer;color:var(--muted);font-size:12px}
small,.muted{color:var(--muted)}.sub,.settle{display:block}.behind{color:var(--wait);font-weight:600}
.badge{display:inline-block;border-radius:10px;padding:0 8px;font-size:12px;font-weight:600;
line-height:20px;white-space:nowrap}
.badge.ok{color:var(--ok);background:var(--okbg)}
.badge.failing{color:var(--bad);background:var(--badbg)}
.badge.pending{color:var(--wait);background:var(--waitbg)}
.num{font-size:18px;font-weight:600}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:6px 14px;margin:6px 0 0}
dl.kv dt{color:var(--muted)}dl.kv dd{margin:0;min-width:0}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:14px}
.pair .card{margin-bottom:0}
footer{color:var(--muted);text-align:center;padding:0 16px 20px;font-size:12px}
@media (max-width:700px){
main{padding:10px 8px}
.pair{grid-template-columns:1fr;gap:14px}
table,thead,tbody,tr,td{display:block;width:auto}
th:first-child,td:first-child{width:auto}
thead{display:none}
tr{border-top:1px solid var(--line);padding:6px 0}
tr.error-row{border-top:0;padding-top:0}
td{border:0;padding:2px 0}
td[data-label]{display:flex;gap:8px;align-items:baseline}
td[data-label]>div{flex:1;min-width:0}
td[data-label]::before{content:attr(data-label);flex:none;width:10.5em;color:var(--muted);
font-size:11px;text-transform:uppercase;letter-spacing:.03em}
td[data-label="Rule"]::before{display:none}
.sub,.settle{display:inline;margin-right:6px}.settle{white-space:nowrap}
dl.kv{grid-template-columns:1fr;gap:0}dl.kv dd{margin-bottom:6px}
}
"""
