"""Benchmark: how long Prometheus itself takes to take one evaluation's samples.

Not a test. Run with ``uv run --frozen python -m bench.receiver`` (``--quick``: 2,000
series). ``bench.evaluate`` measures an evaluation end to end, until Prometheus has
acknowledged every sample: this measures the receiver's part alone, on the same machine,
so that the end-to-end figures can be read against it.

For 100,000 and 1,000,000 series shaped like the cost rule's output, the samples of a
first evaluation (every series new: Prometheus creates them; two samples each, the 0 at
the previous window end and the value) and of a steady one (the same series one window
later, one sample each) are encoded beforehand by the daemon's encoder, in requests of
2,000 samples (the default ``max_samples_per_send``), and posted by the daemon's
remote-write client, four at a time as its sender posts independent requests. Figures:
the wall time from the first request to the last acknowledgement, the CPU time Prometheus
spent meanwhile (``/proc/<pid>/stat``), and this process's. Check: Prometheus holds every
series afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Report, machine
from bench.encode import make_series
from bridge.remote_write import Batch, BatchEncoder, RemoteWriteClient, encode_write_request
from bridge.series import Sample

RECORD = "openrouter_cost_usd_total"
"""The record of the series ``bench.encode.make_series`` makes."""
IN_FLIGHT = 4
"""Requests posted at once, as the sender posts the independent requests of an evaluation."""


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def post(client: RemoteWriteClient, batches: list[Batch]) -> None:
    """Post every request, ``IN_FLIGHT`` at a time."""
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def one(batch: Batch) -> None:
        async with slots:
            await client.send(batch.body)

    await asyncio.gather(*(one(batch) for batch in batches))


async def measure(count: int, report: Report) -> None:
    from tests.support.prometheus import start_prometheus

    name = f"{count:,} series"
    labels = [one for one, *_ in make_series(count, 0)]
    end_ms = int(time.time()) // 60 * 60 * 1000
    encoder = BatchEncoder({}, 2_000)
    first: list[Sample] = [s for i, one in enumerate(labels)
                           for s in ((one, end_ms - 120_000, 0.0),
                                     (one, end_ms - 60_000, 0.000125 * (i % 997 + 1)))]
    steady: list[Sample] = [(one, end_ms, 0.00025 * (i % 997 + 1))
                            for i, one in enumerate(labels)]
    evaluations = {"first": encoder(first, {}), "steady": encoder(steady, {})}
    with tempfile.TemporaryDirectory(prefix="bench-receiver-") as tmp, \
            start_prometheus(Path(tmp)) as prom:
        async with RemoteWriteClient(prom.write_url) as client:
            await client.send(encode_write_request([]))  # the connection, made beforehand
            for when, batches in evaluations.items():
                prom_cpu, own_cpu = cpu_seconds(prom.pid), time.process_time()
                started = time.perf_counter()
                await post(client, batches)
                wall = time.perf_counter() - started
                report.figure(f"{name}: {when}: wall time", wall, "s")
                report.figure(f"{name}: {when}: Prometheus's CPU time",
                              cpu_seconds(prom.pid) - prom_cpu, "s")
                report.figure(f"{name}: {when}: this process's CPU time",
                              time.process_time() - own_cpu, "s")
                report.note(f"{name}: {when}: {sum(b.samples for b in batches):,} samples in "
                            f"{len(batches)} requests")
        stored = prom.query(f"count({RECORD})", time=end_ms / 1000, timeout=120)
        held = int(stored[0]["value"][1]) if stored else 0
        report.check(f"{name}: Prometheus holds every series", held == count,
                     f"{held} != {count}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2,000 series")
    args = parser.parse_args(argv)
    report = Report("receiver")
    report.note(machine())
    for count in (2_000,) if args.quick else (100_000, 1_000_000):
        asyncio.run(measure(count, report))
    return report.exit_status()


if __name__ == "__main__":
    sys.exit(main())
