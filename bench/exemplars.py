"""Benchmark of what exemplars cost the bridge: one steady evaluation with them and without.

Not a test. Run with ``uv run --frozen python -m bench.exemplars`` (``--quick``: 2,000
series only; else 2,000 and 100,000).

A real Prometheus with exemplar storage, and the prebuilt Tempo answers of
``bench/evaluate.py`` served over HTTP: an instant answer (what a group with
``exemplars: false`` reads for a window) and the one-window range answer (what a group
with exemplars on reads: two buckets per series, the extra one dropped, and Tempo's
exemplars for 50 series, as Tempo gives at most 50 in the window). For each mode, the
bridge's own engine and sender on a fresh state record one window (every series new), then
the next one, the steady state measured: wall time and this process's CPU time for
``Engine.evaluate_rule`` plus ``Sender.drain``, the bytes of Tempo's answer, the bytes of
the remote-write requests, and the exemplars Prometheus then holds. The two modes run in
turn, twice, and the faster of each is reported (the machine is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from bench.common import Report, machine, serve_tempo, wire
from bench.evaluate import RECORD, RULES, range_body, tempo_answers

SIZES = (2_000, 100_000)
QUICK_SIZES = (2_000,)
MODES = ("exemplars on", "exemplars off")


async def serve(instant: bytes, ranged: bytes, sent: list[int]) -> tuple[web.AppRunner, str]:
    """Serve the answers; ``sent`` gets the size of each body served."""

    async def answer_instant(_: web.Request) -> web.Response:
        sent.append(len(instant))
        return web.Response(body=instant, content_type="application/json")

    async def answer_range(request: web.Request) -> web.Response:
        body = range_body(ranged, int(request.query["start"]), int(request.query["end"]))
        sent.append(len(body))
        return web.Response(body=body, content_type="application/json")

    return await serve_tempo(answer_instant, answer_range)


async def steady(mode: str, tempo_url: str, write_url: str, sent: list[int], tmp: Path,
                 name: str) -> dict[str, Any]:
    """Two evaluations one window apart; the figures of the second."""
    from bridge.config import RemoteWriteConfig
    from bridge.remote_write import Batch
    from bridge.sender import encoder

    rules = RULES.replace("labels: {source: openrouter}",
                          f"labels: {{source: openrouter, run: {name}}}")
    if mode == "exemplars off":
        rules = rules.replace("    rules:\n", "    exemplars: false\n    rules:\n", 1)
    encode = encoder({}, RemoteWriteConfig(url=write_url).max_samples_per_send)
    written: list[int] = []

    def encode_counted(*args: Any) -> list[Batch]:
        batches = encode(*args)
        written.extend(len(b.body) for b in batches)
        return batches

    wired = wire(tmp, rules, tempo_url, write_url, encode=encode_counted)
    group, rule, engine, state = wired.group, wired.rule, wired.engine, wired.state
    now = time.time() // 60 * 60 + 150  # the window ending on the minute before, 2.5 m back
    result: dict[str, Any] = {}
    for clock in (now - group.interval, now):
        sent.clear()
        written.clear()
        cpu, wall = time.process_time(), time.perf_counter()
        ok = await engine.evaluate_rule(group, rule, clock)
        await wired.sender.drain()
        result = {"ok": ok, "wall": time.perf_counter() - wall,
                  "cpu": time.process_time() - cpu, "tempo_bytes": sum(sent),
                  "write_bytes": sum(written), "outbox": state.outbox_samples(),
                  "window_end": int(clock - group.query_offset) // 60 * 60}
    await wired.close()
    return result


async def run(sizes: Sequence[int]) -> int:
    from bridge.logs import configure
    from tests.support.prometheus import start_prometheus

    configure("warning", stream=sys.stderr)
    report = Report("exemplars")
    report.note(machine())
    with tempfile.TemporaryDirectory(prefix="bench-exemplars-") as tmp, \
            start_prometheus(Path(tmp) / "prometheus", exemplar_storage=True) as prom:
        for series in sizes:
            instant, ranged = tempo_answers(series)
            sent: list[int] = []
            runner, url = await serve(instant, ranged, sent)
            best: dict[str, dict[str, Any]] = {}
            try:
                for attempt in range(2):
                    for mode in MODES:
                        name = f"s{series}-{mode.split()[-1]}-{attempt}"
                        directory = Path(tmp) / name
                        directory.mkdir()
                        result = await steady(mode, url, prom.write_url, sent, directory, name)
                        report.check(f"{series:,} {mode}: both evaluations succeeded",
                                     result["ok"] and result["outbox"] == 0)
                        found = prom.query_exemplars(
                            f'{RECORD}{{run="{name}"}}', result["window_end"] - 60,
                            result["window_end"] + 1)
                        result["exemplars"] = sum(len(i["exemplars"]) for i in found)
                        if mode not in best or result["wall"] < best[mode]["wall"]:
                            best[mode] = result
            finally:
                await runner.cleanup()
            on, off = best["exemplars on"], best["exemplars off"]
            for mode, result in best.items():
                label = f"{series:,} {mode}"
                report.figure(f"{label}: steady wall time", result["wall"], "s")
                report.figure(f"{label}: steady CPU time", result["cpu"], "s")
                report.figure(f"{label}: Tempo's answer", result["tempo_bytes"], "bytes")
                report.figure(f"{label}: remote-write bytes", result["write_bytes"], "bytes")
                report.figure(f"{label}: exemplars in Prometheus", result["exemplars"])
            report.figure(f"{series:,}: wall time on / off", on["wall"] / off["wall"], "x",
                          digits=2)
            report.figure(f"{series:,}: CPU time on / off", on["cpu"] / off["cpu"], "x",
                          digits=2)
            report.check(f"{series:,}: exemplars only with them on",
                         on["exemplars"] == 50 and off["exemplars"] == 0,
                         f"{on['exemplars']}, {off['exemplars']}")
    return report.exit_status()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2,000 series only")
    args = parser.parse_args(argv)
    return asyncio.run(run(QUICK_SIZES if args.quick else SIZES))


if __name__ == "__main__":
    sys.exit(main())
