"""Shared pieces of the benchmarks: figure lines, memory readings, spans, a Tempo double server.

Every benchmark prints its results as figure lines, one per figure, in one format that a
person can read and ``tests/test_bench.py`` parses (its ``FIGURE``)::

    [evaluate] wall time ........................ 0.812 s      target <= 1.0 s: met

``[bench] label ..... value [unit] [(share%)] [target <= 1.0 s: met]``, or ``# text`` after
the ``[bench]`` for a note. A benchmark whose correctness check fails
(catch-up totals differing from a run that never stopped, ...) exits with status 1; a
missed target is only reported (``MISSED``).
"""

from __future__ import annotations

import bisect
import contextlib
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
from aiohttp import web

from tests.support import traffic
from tests.support.servers import listen
from tests.support.traffic import Key

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_CONFIG = ROOT / "examples" / "bridge.yaml"

# -- figures ----------------------------------------------------------------------------------


class Report:
    """Prints one benchmark's figure lines and remembers whether a correctness check failed."""

    def __init__(self, bench: str) -> None:
        self.bench = bench
        self.failures: list[str] = []

    def figure(
        self,
        label: str,
        value: float | str,
        unit: str = "",
        *,
        at_most: float | None = None,
        at_least: float | None = None,
        digits: int = 3,
        share: float | None = None,
    ) -> None:
        """Print one figure, its share of a whole (a fraction), and its target when it has
        one (``at_most`` or ``at_least``)."""
        text = _format(value, digits)
        line = f"[{self.bench}] {label} {'.' * max(2, 44 - len(label))} {text}"
        if unit:
            line += f" {unit}"
        if share is not None:
            line += f" ({share:.1%})"
        if at_most is not None or at_least is not None:
            bound = at_most if at_most is not None else at_least
            assert bound is not None
            assert isinstance(value, int | float)
            met = value <= bound if at_most is not None else value >= bound
            sign = "<=" if at_most is not None else ">="
            target = f"{sign} {_format(bound, digits)}" + (f" {unit}" if unit else "")
            line = f"{line:<68} target {target}: {'met' if met else 'MISSED'}"
        print(line, flush=True)

    def check(self, label: str, ok: bool, detail: str = "") -> None:
        """A correctness check: printed as ``yes``/``no``; ``no`` makes the benchmark fail."""
        self.figure(label, "yes" if ok else "no")
        if not ok:
            self.failures.append(f"{label}: {detail}" if detail else label)
            print(f"[{self.bench}] check failed: {label} {detail}", file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        """A line of context that is not a figure (what was measured, how)."""
        print(f"[{self.bench}] # {text}", flush=True)

    def exit_status(self) -> int:
        return 1 if self.failures else 0


def _format(value: float | str, digits: int) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


@dataclass
class Stopwatch:
    """Time spent per stage, summed over calls (see :func:`timed`), and, while
    :meth:`sampling`, the most resident memory seen in each stage (MB; ``"between"``:
    outside them)."""

    seconds: dict[str, float]
    resident: dict[str, float]
    stage: str

    def __init__(self) -> None:
        self.seconds = defaultdict(float)
        self.resident = defaultdict(float)
        self.stage = "between"

    @contextlib.contextmanager
    def sampling(self, every: float = 0.01) -> Iterator[None]:
        """Sample the process's resident memory every ``every`` seconds on a thread, each
        sample counted to the stage under way."""
        page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20
        done = threading.Event()

        def sample() -> None:
            with open("/proc/self/statm", "rb") as statm:
                while not done.wait(every):
                    statm.seek(0)
                    mb = int(statm.read().split()[1]) * page_mb
                    stage = self.stage
                    if mb > self.resident[stage]:
                        self.resident[stage] = mb

        sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
        sampler.start()
        try:
            yield
        finally:
            done.set()
            sampler.join()


def timed(stopwatch: Stopwatch, owner: Any, name: str, stage: str) -> None:
    """Replace ``owner.name`` (a function or method, sync or async) by one that adds its
    time to ``stopwatch.seconds[stage]``. Raises AttributeError when ``owner`` has no
    ``name``, so a renamed function is noticed rather than silently not measured."""
    import inspect

    original = getattr(owner, name)
    if inspect.iscoroutinefunction(original):

        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            started, outer, stopwatch.stage = time.perf_counter(), stopwatch.stage, stage
            try:
                return await original(*args, **kwargs)
            finally:
                stopwatch.seconds[stage] += time.perf_counter() - started
                stopwatch.stage = outer

        setattr(owner, name, async_wrapper)
    else:

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started, outer, stopwatch.stage = time.perf_counter(), stopwatch.stage, stage
            try:
                return original(*args, **kwargs)
            finally:
                stopwatch.seconds[stage] += time.perf_counter() - started
                stopwatch.stage = outer

        setattr(owner, name, wrapper)


# -- memory -----------------------------------------------------------------------------------


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MB: ``VmHWM`` where there is a
    ``/proc``, else ``ru_maxrss``. (On Linux ``ru_maxrss`` also counts the parent's memory
    that a forked child held before it ran ``exec``, so it can overstate a child's peak.)"""
    with contextlib.suppress(OSError, KeyError):
        return proc_status_mb()["VmHWM"]
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def proc_status_mb(pid: int | str = "self") -> dict[str, float]:
    """``VmRSS`` (resident now), ``VmHWM`` (peak), ``RssAnon``... of a process, in MB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if rest.strip().endswith(" kB"):
            out[key] = int(rest.split()[0]) / 1024
    return out


def machine() -> str:
    """``nproc`` and the CPU model, for the record."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} CPUs, {model}, Python {sys.version.split()[0]}"


# -- OpenRouter spans -------------------------------------------------------------------------

def make_spans(start: float, seconds: float, mean_gap: float, seed: int) -> list[Any]:
    """The synthetic OpenRouter traffic of ``tests/support/traffic.py``, requests about
    ``mean_gap`` seconds apart over ``(start, start + seconds)``."""
    return traffic.make_spans(start, seconds, seed, gap=(0.2 * mean_gap, 1.8 * mean_gap))


def totals_differences(
    got: Mapping[str, Mapping[Key, float]], want: Mapping[str, Mapping[Key, float]]
) -> list[str]:
    """How two sets of totals differ: token and request counts must be equal, costs within
    1e-9 relative (Tempo's float sums may differ from an exact sum in the last bits)."""
    problems = []
    for record in sorted(set(got) | set(want)):
        mine, theirs = got.get(record, {}), want.get(record, {})
        for key in sorted(set(mine) | set(theirs)):
            a, b = mine.get(key, 0.0), theirs.get(key, 0.0)
            exact = "cost" not in record
            if (a != b) if exact else abs(a - b) > 1e-9 * max(abs(a), abs(b), 1e-12):
                problems.append(f"{record}{dict(key)}: {a!r} != {b!r}")
    return problems


def without_name(labels: Key) -> Key:
    """A series' labels without ``__name__``."""
    return tuple(pair for pair in labels if pair[0] != "__name__")


# -- the Tempo double, in a process of its own ------------------------------------------------


@dataclass(frozen=True)
class SpanSpec:
    """The arguments of :func:`make_spans`: what a Tempo server process holds."""

    start: float
    seconds: float
    mean_gap: float
    seed: int

    def spans(self) -> list[Any]:
        return make_spans(self.start, self.seconds, self.mean_gap, self.seed)

    def args(self) -> list[str]:
        return ["--start", repr(self.start), "--seconds", repr(self.seconds),
                "--mean-gap", repr(self.mean_gap), "--seed", str(self.seed)]


class TempoServer:
    """``python -m bench.tempo_server``: the Tempo double over HTTP in a child process, so
    that its TraceQL evaluation does not share the benchmarked process's CPU time."""

    def __init__(self, spec: SpanSpec, *, query_end_cutoff: float) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.tempo_server", *spec.args(),
             "--query-end-cutoff", repr(query_end_cutoff)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline().strip()
        if not line.startswith("http://"):
            self.stop()
            raise RuntimeError(f"the Tempo double server did not start: {line!r}")
        self.url = line

    def queries(self) -> list[Query]:
        """The metrics queries it answered so far, in order."""
        response = httpx.get(f"{self.url}/bench/queries", timeout=30)
        response.raise_for_status()
        return [Query(**q) for q in response.json()]

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


@dataclass(frozen=True)
class Query:
    """A metrics query the Tempo double server answered."""

    kind: Literal["instant", "range"]
    start: str
    end: str


@contextlib.contextmanager
def tempo_server(spec: SpanSpec, *, query_end_cutoff: float) -> Iterator[TempoServer]:
    server = TempoServer(spec, query_end_cutoff=query_end_cutoff)
    try:
        yield server
    finally:
        server.stop()


def spans_between(spans: Sequence[Any], low_ns: int, high_ns: int) -> Sequence[Any]:
    """The spans (sorted by start) starting in ``[low_ns, high_ns]``."""
    key: Callable[[Any], int] = lambda span: span.start_ns  # noqa: E731
    return spans[bisect.bisect_left(spans, low_ns, key=key):
                 bisect.bisect_right(spans, high_ns, key=key)]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` every 50 ms until it holds; RuntimeError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


# -- the bridge as the daemon wires it, against a stand-in Tempo ------------------------------

Handler = Callable[[web.Request], Awaitable[web.Response]]


async def serve_tempo(instant: Handler, ranged: Handler) -> tuple[web.AppRunner, str]:
    """Serve ``instant`` and ``ranged`` as Tempo's two metrics endpoints on a free port;
    returns the runner (to clean up) and the base URL."""
    app = web.Application()
    app.router.add_get("/api/metrics/query", instant)
    app.router.add_get("/api/metrics/query_range", ranged)
    return await listen(app)


@dataclass
class Wired:
    """One rule's engine, state, encoder and sender, wired as the daemon wires them."""

    group: Any
    rule: Any
    state: Any
    metrics: Any
    tempo: Any
    receiver: Any
    sender: Any
    engine: Any
    worker: Any
    state_worker: Any

    async def close(self) -> None:
        await self.tempo.aclose()
        await self.receiver.aclose()
        self.worker.close()
        self.state_worker.close()
        self.state.close()

    def stopwatch(self) -> Stopwatch:
        """A stopwatch timing the stages of :data:`STAGES` from now on."""
        import bridge.engine

        watch = Stopwatch()
        for name in TEMPO_QUERIES:
            timed(watch, self.tempo, name, "tempo")
        timed(watch, bridge.engine, "reads_from_buckets", "split")
        timed(watch, bridge.engine, "evaluate", "evaluate")
        timed(watch, self.engine, "_encode", "encode")
        timed(watch, self.state, "commit", "commit")
        timed(watch, self.receiver, "send", "send")
        for name in ("outbox", "next_outbox_id", "remove_from_outbox", "outbox_oldest_ts_ms"):
            timed(watch, self.state, name, "outbox")
        return watch


TEMPO_QUERIES = ("instant_buckets", "range_buckets")
"""The methods of the Tempo client the engine queries with: what a stopwatch times as the
"tempo" stage (a benchmark checks that it timed something, so that a query made another
way is noticed)."""

STAGES = {
    "tempo": "Tempo query: HTTP + JSON parse into buckets",
    "split": "buckets to windows, exemplars",
    "evaluate": "evaluate (counters, labels, samples)",
    "encode": "encode the requests (protobuf + snappy)",
    "commit": "commit state + outbox",
    "send": "send to Prometheus (HTTP)",
    "outbox": "outbox bookkeeping",
}
"""The stages a :meth:`Wired.stopwatch` times, in the order of the data flow."""


def wire(directory: Path, rules: str, tempo_url: str, write_url: str,
         encode: Callable[..., Any] | None = None, **engine: Any) -> Wired:
    """The bridge's pieces for the one rule of ``rules`` (a rule file's text), its state in
    ``directory``: the defaults of the config, ``encode`` in place of the encoder if given,
    ``engine`` passed on to the Engine."""
    from bridge.config import RemoteWriteConfig, TempoConfig
    from bridge.engine import Engine
    from bridge.metrics import Metrics
    from bridge.remote_write import RemoteWriteClient
    from bridge.rulefmt import load_rule_files
    from bridge.sender import Sender, encoder
    from bridge.state import State
    from bridge.tempo import TempoClient
    from bridge.windows import Limits
    from bridge.worker import Worker

    (directory / "rules.yaml").write_text(rules)
    (group,) = load_rule_files([str(directory / "rules.yaml")], min_query_offset=45)
    (rule,) = group.rules
    remote = RemoteWriteConfig(url=write_url)
    state = State(directory / "state.sqlite")
    metrics = Metrics()
    # as the daemon runs them: parse, evaluate and encode off the loop, state calls too
    worker, state_worker = Worker(), Worker("state")
    tempo = TempoClient(tempo_url, timeout=600, worker=worker, canonical=state.canonical)
    receiver = RemoteWriteClient(write_url)
    sender = Sender(state, receiver, metrics, max_sample_age=remote.max_sample_age,
                    state_worker=state_worker)
    engine.setdefault("limits", Limits(int(TempoConfig().max_duration)))
    engine.setdefault("max_sample_age", remote.max_sample_age)
    bridge_engine = Engine(
        tempo, state, metrics, encode=encode or encoder({}, remote.max_samples_per_send),
        on_commit=sender.enqueue, worker=worker, state_worker=state_worker, **engine,
    )
    return Wired(group, rule, state, metrics, tempo, receiver, sender, bridge_engine, worker,
                 state_worker)
