"""Benchmark of one evaluation of a counter rule whose Tempo answer has 100,000 series.

Not a test. Run with ``uv run --frozen python -m bench.evaluate`` (``--quick``: 2,000
series; ``--profile``: cProfile of the steady evaluation, printed by the child process).

This process starts a real Prometheus and serves a prebuilt Tempo answer over HTTP: the
JSON of an instant TraceQL metrics query, shaped as Tempo 3.0.3 answers (labels as OTLP
AnyValues named as written in ``by()``, a value of 0 without its ``value`` key). A child
process, whose memory is what is measured, runs the bridge's own engine and sender on a
fresh state: ``Engine.evaluate_rule`` (query Tempo and parse the answer, map the labels,
accumulate the counters, commit the state and fill the outbox in one transaction) then
``Sender.drain`` (read the outbox, encode, send to Prometheus, delete what was sent).

Two evaluations run, one window apart: the first meets 100,000 new series (each also
written as 0 at the previous window end); the second, the steady state, is the one the
targets apply to (<= 1.0 s end to end, peak RSS <= 250 MB for the whole process). The
share of each stage is measured by wrapping the functions the engine and sender call.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from bench.common import (
    Report,
    Stopwatch,
    machine,
    peak_rss_mb,
    proc_status_mb,
    timed,
)

RECORD = "bench_cost_usd_total"
RULES = f"""\
groups:
  - name: bench
    interval: 1m
    query_offset: 2m
    settle: [10m, 1h]
    labels: {{source: openrouter}}
    rules:
      - record: {RECORD}
        expr: >-
          {{ resource.service.name = "openrouter" && name = "LLM Generation" }}
          | sum_over_time(span.gen_ai.usage.total_cost)
          by (span.gen_ai.request.model, span.gen_ai.provider.name,
              span.trace.metadata.openrouter.api_key_name)
        kind: counter
        rename:
          gen_ai_request_model: model
          gen_ai_provider_name: provider
          trace_metadata_openrouter_api_key_name: api_key_name
"""
BY = ("span.gen_ai.request.model", "span.gen_ai.provider.name",
      "span.trace.metadata.openrouter.api_key_name")

# stage name -> what it covers, in the order of the data flow
STAGES = {
    "tempo": "Tempo query: HTTP + JSON parse",
    "labels": "map labels, split windows",
    "load": "load the rule's state",
    "accumulate": "accumulate counters",
    "values": "keep window values (settle)",
    "commit": "commit state + fill outbox",
    "outbox": "outbox read/bookkeeping/delete",
    "group": "group samples per series",
    "encode": "encode (protobuf + snappy)",
    "send": "send to Prometheus (HTTP)",
}


def _series_labels(i: int) -> list[dict[str, Any]]:
    values = (f"vendor-{i // 1000 % 10}/model-{i // 1000}-instruct",
              f"provider-{i // 1000 % 25}", f"team-{i % 1000:04d}-production-key")
    return [{"key": key, "value": {"stringValue": value}}
            for key, value in zip(BY, values, strict=True)]


def _value(i: int) -> float:
    return round(0.000125 * (i % 997 + 1), 9)


def tempo_answers(series: int) -> tuple[bytes, bytes]:
    """An instant answer and a one-window range answer (a template: see ``range_body``)
    with ``series`` series of the OpenRouter cost rule's shape, as Tempo 3.0.3 writes
    them: a value of 0 without its ``value`` key; in the range answer, the extra bucket
    before the window, and exemplars (trace IDs) for the first 50 series (Tempo's
    ``max_exemplars`` of 100 per query, half of them in the window)."""
    instant, ranged = [], []
    for i in range(series):
        labels = _series_labels(i)
        item: dict[str, Any] = {"labels": labels}
        if i % 50:  # Tempo leaves the value of 0 out
            item["value"] = _value(i)
        instant.append(item)
        one: dict[str, Any] = {
            "labels": labels,
            "samples": [{"timestampMs": "__START__"},
                        {"timestampMs": "__END__", "value": _value(i)}],
        }
        if i < 50:
            one["exemplars"] = [{
                "labels": [{"key": "trace:id", "value": {"stringValue": f"{i + 1:032x}"}}],
                "value": _value(i), "timestampMs": "__SPAN__",
            }]
        ranged.append(one)
    metrics = {"inspectedSpans": str(series * 3), "completedJobs": 1, "totalJobs": 1}
    return (json.dumps({"series": instant, "metrics": metrics}, separators=(",", ":")).encode(),
            json.dumps({"series": ranged, "metrics": metrics}, separators=(",", ":")).encode())


def range_body(template: bytes, start: int, end: int) -> bytes:
    """The range answer for the window ``(start, end]``: buckets stamped ``start`` (the
    extra one) and ``end``, spans a second before the end."""
    return (template.replace(b'"__START__"', b'"%d"' % (start * 1000))
            .replace(b'"__END__"', b'"%d"' % (end * 1000))
            .replace(b'"__SPAN__"', b'"%d"' % (end * 1000 - 1000)))


# -- the child: the measured process ----------------------------------------------------------


async def child(tempo_url: str, write_url: str, profile: bool) -> dict[str, Any]:
    """Two evaluations and drains, one window apart; their stage times and the memory."""
    import bridge.engine
    import bridge.sender
    from bridge.config import RemoteWriteConfig, TempoConfig
    from bridge.engine import Engine, rule_key
    from bridge.logs import configure
    from bridge.metrics import Metrics
    from bridge.remote_write import RemoteWriteClient
    from bridge.rulefmt import load_rule_files
    from bridge.sender import Sender, encoder
    from bridge.state import State
    from bridge.tempo import TempoClient
    from bridge.windows import Limits

    configure("warning", stream=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix="bench-evaluate-"))
    (tmp / "rules.yaml").write_text(RULES)
    (group,) = load_rule_files([str(tmp / "rules.yaml")], min_query_offset=45)
    (rule,) = group.rules
    remote = RemoteWriteConfig(url=write_url)
    state = State(tmp / "state.sqlite")
    metrics = Metrics()
    tempo = TempoClient(tempo_url)
    receiver = RemoteWriteClient(write_url)
    sender = Sender(state, receiver, metrics, max_sample_age=remote.max_sample_age)
    engine = Engine(tempo, state, metrics, limits=Limits(int(TempoConfig().max_duration)),
                    encode=encoder({}, remote.max_samples_per_send), on_commit=sender.enqueue)

    watch = Stopwatch()
    for name in ("instant", "range"):
        timed(watch, tempo, name, "tempo")
    timed(watch, bridge.engine, "reads_from_answer", "split")
    timed(watch, bridge.engine, "evaluate", "evaluate")
    timed(watch, state, "load", "load")
    timed(watch, state, "commit", "commit")
    for name in ("outbox", "next_outbox_id", "remove_from_outbox", "outbox_oldest_ts_ms"):
        timed(watch, state, name, "outbox")
    timed(watch, bridge.sender, "encode_batches", "encode")
    timed(watch, receiver, "send", "send")

    result: dict[str, Any] = {"rss_before": proc_status_mb()["VmRSS"], "evaluations": []}
    profiler = cProfile.Profile() if profile else None
    now = time.time()
    for clock in (now - group.interval, now):
        steady = clock == now
        watch.seconds.clear()
        sent_before = metrics.registry.get_sample_value("tempo_bridge_samples_sent_total") or 0
        started = time.perf_counter()
        if profiler and steady:
            profiler.enable()
        ok = await engine.evaluate_rule(group, rule, clock)
        await sender.drain()
        if profiler and steady:
            profiler.disable()
        wall = time.perf_counter() - started
        sent = (metrics.registry.get_sample_value("tempo_bridge_samples_sent_total") or 0)
        result["evaluations"].append({
            "ok": ok, "wall": wall, "stages": dict(watch.seconds),
            "samples": int(sent - sent_before), "outbox": state.outbox_samples(),
            "peak_rss": peak_rss_mb(),
        })
    stored = state.load(rule_key(group, rule))
    result["series"] = len(stored.totals) if stored else 0
    result["peak_rss"] = peak_rss_mb()
    result["rss_after"] = proc_status_mb()["VmRSS"]
    await tempo.aclose()
    await receiver.aclose()
    state.close()
    if profiler:
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    return result


# -- the parent: Tempo's answer, Prometheus, the figures ----------------------------------------


async def serve_answers(instant: bytes, ranged: bytes) -> tuple[web.AppRunner, str]:
    """Serve ``instant`` as the answer of every instant query, and ``ranged`` (stamped
    with the window asked for) as that of every range query."""

    async def answer_instant(_: web.Request) -> web.Response:
        return web.Response(body=instant, content_type="application/json")

    async def answer_range(request: web.Request) -> web.Response:
        start, end = int(request.query["start"]), int(request.query["end"])
        return web.Response(body=range_body(ranged, start, end),
                            content_type="application/json")

    app = web.Application()
    app.router.add_get("/api/metrics/query", answer_instant)
    app.router.add_get("/api/metrics/query_range", answer_range)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


async def run(series: int, profile: bool) -> int:
    from tests.support.prometheus import start_prometheus

    report = Report("evaluate")
    report.note(machine())
    instant, ranged = tempo_answers(series)
    with tempfile.TemporaryDirectory(prefix="bench-evaluate-") as tmp, \
            start_prometheus(Path(tmp)) as prom:
        runner, url = await serve_answers(instant, ranged)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.evaluate", "--child", url, prom.write_url,
                *(["--profile"] if profile else []), stdout=asyncio.subprocess.PIPE,
            )
            out, _ = await process.communicate()
        finally:
            await runner.cleanup()
        if process.returncode:
            report.check("the evaluation ran", False, f"child exited {process.returncode}")
            return report.exit_status()
        result = json.loads(out.decode().strip().splitlines()[-1])
        stored = prom.query(f"count({RECORD})")
        in_prometheus = int(stored[0]["value"][1]) if stored else 0

    report.note(f"Tempo's answer: {series:,} series; {len(ranged) / 1e6:.1f} MB of JSON for a "
                "one-window range query (exemplars on), {len(instant) / 1e6:.1f} MB for an "
                "instant one; the engine and sender run in a child process")
    first, steady = result["evaluations"]
    for name, evaluation in (("first", first), ("steady", steady)):
        report.note(f"{name} evaluation: {evaluation['samples']:,} samples sent")
        for stage, what in STAGES.items():
            seconds = evaluation["stages"].get(stage, 0.0)
            report.figure(f"{name}: {what}", seconds, "s", share=seconds / evaluation["wall"])
        other = evaluation["wall"] - sum(evaluation["stages"].values())
        report.figure(f"{name}: other", other, "s", share=other / evaluation["wall"])
        report.figure(f"{name}: wall time", evaluation["wall"], "s",
                      at_most=1.0 if evaluation is steady else None)
        report.figure(f"{name}: peak RSS so far", evaluation["peak_rss"], "MB", digits=1)
    report.figure("RSS before the evaluations", result["rss_before"], "MB", digits=1)
    report.figure("peak RSS", result["peak_rss"], "MB", digits=1, at_most=250)
    report.check("both evaluations succeeded", first["ok"] and steady["ok"])
    report.check("every series has a total", result["series"] == series,
                 f"{result['series']} != {series}")
    report.check("every sample was sent", first["samples"] == 2 * series
                 and steady["samples"] == series and steady["outbox"] == 0,
                 f"{first['samples']}, {steady['samples']}")
    report.check("Prometheus holds every series", in_prometheus == series,
                 f"{in_prometheus} != {series}")
    return report.exit_status()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2,000 series instead of 100,000")
    parser.add_argument("--series", type=int, help="series in Tempo's answer")
    parser.add_argument("--profile", action="store_true", help="cProfile the steady evaluation")
    parser.add_argument("--child", nargs=2, metavar=("TEMPO_URL", "WRITE_URL"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        tempo_url, write_url = args.child
        result = asyncio.run(child(tempo_url, write_url, args.profile))
        print(json.dumps(result), flush=True)
        return 0
    series = args.series or (2_000 if args.quick else 100_000)
    return asyncio.run(run(series, args.profile))


if __name__ == "__main__":
    sys.exit(main())
