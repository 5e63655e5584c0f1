"""Fault injection: the real daemon against a failing Tempo, a failing receiver and SIGKILL.

Not a unit test: a measurement anyone can run, with a real ``tempo-bridge run`` process and
a real Prometheus (Debian's ``/usr/bin/prometheus``, or ``$PROMETHEUS_BIN``)::

    uv run --frozen python -m reliability.faults [--quick] [--scenario NAME ...] [--seed N]
                                                 [--keep DIR]

Each scenario starts a fresh daemon (``python -m bridge run``, a subprocess that can be
SIGKILLed) on the shipped default rules (``rules/openrouter.yaml``) with one-second windows,
``query_offset: 1s`` and settle passes a few seconds later. The daemon reads a Tempo double
(``tests/doubles/tempo.py``) served over HTTP from this process, and writes through a
remote-write proxy in this process to Prometheus. The scenarios break or change one thing
each:

``tempo-down``       the double stops listening for some windows (connection refused)
``tempo-faults``     random 5xx/429, timeouts, dropped connections, PARTIAL and garbage answers
``receiver-down``    the proxy stops listening for some windows
``receiver-faults``  random 429 with Retry-After, 5xx, resets, lost acknowledgements, and a
                     400 "out of order sample" for every request holding one poison series
``sigkill``          the daemon is SIGKILLed at random moments and restarted at once
``late-spans``       spans are added to windows already recorded, before their settle ages
``edits``            the rule file is edited and reloaded (SIGHUP, ``POST /-/reload``, one
                     restart): interval, settle ages, group labels, ``rename``,
                     ``missing_value`` and ``idle_after``, none changing a rule's identity

How a lost or double-counted window is seen: every window ``(W-1, W]`` holds one *probe*
span, an ``LLM Generation`` span like the others but with the model ``probe/window-W``, so
every default rule keeps one counter series per window whose final value is known exactly
(1 request, 1 input token, 2 output tokens, 0.25 + 0.5 USD per probe span; binary fractions,
so sums are exact). Read back from Prometheus, a probe series below its truth means the
window was lost (for that rule), above it means it was counted twice (under the labels the
rule file gives it at the end, in ``edits``). The ordinary traffic
(random models, keys, tokens and costs, some spans exactly on a window end, child spans and
another service's spans that the rules must not count) is compared series by series with
the truth computed from the spans: the largest relative error over every counter is
reported. See ``docs/reliability.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import io
import math
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from aiohttp import web
from ruamel.yaml import YAML

from bridge.components import STATE_FILE
from bridge.errors import ConfigError
from bridge.remote_write import decode_write_request
from bridge.rulefmt import load_rule_files
from bridge.series import is_stale_nan
from tests.doubles.tempo import CloseConnection, Fault, Hang, Response, Span, TempoDouble
from tests.support.files import default_rules, write_config
from tests.support.prometheus import PrometheusServer, start_prometheus
from tests.support.traffic import openrouter_spans, span_truth, summed_attributes

ROOT = Path(__file__).resolve().parent.parent

INTERVAL = 1  # seconds: window length of the rewritten default rules
QUERY_OFFSET = 1  # seconds: a window is read 1 s after it ends
START_BACK = 20  # seconds: a new rule starts this far back, before the first span
TEMPO_TIMEOUT = 0.5  # seconds: tempo.timeout of the daemon
RECEIVER_TIMEOUT = 1.0  # seconds: remote_write.timeout of the daemon
FEED_AHEAD = 20  # seconds: spans are handed to the double this far ahead of now
TOLERANCE = 1e-9  # relative: Tempo's float sums may differ from the exact sum in the last bits

PROBE_PREFIX = "probe/window-"
#: What a probe span holds of each attribute a rule sums (1 for any other): binary fractions,
#: so that sums of them are exact.
PROBE_VALUES: Mapping[str, int | float] = {
    "gen_ai.usage.input_tokens": 1,
    "gen_ai.usage.output_tokens": 2,
    "gen_ai.usage.input_cost": 0.25,
    "gen_ai.usage.output_cost": 0.5,
    "gen_ai.usage.total_cost": 0.75,
}

#: The series the receiver refuses in ``receiver-faults`` (external label added by the daemon).
POISON: Mapping[str, str] = {
    "__name__": "openrouter_output_tokens_total",
    "model": "anthropic/claude-3.5-sonnet",
    "provider": "anthropic",
    "api_key_name": "dev-laptop",
}

Metrics = Mapping[str, str | None]
"""Record of each rule -> the span attribute it sums, or None for a count."""
Labels = tuple[tuple[str, str], ...]
SeriesKey = tuple[str, Labels]  # (record, labels without __name__ and the scenario label)


@dataclass(frozen=True)
class Sizes:
    """How much of each fault a run injects; ``FULL`` for the table, ``QUICK`` for CI."""

    down_windows: int  # tempo-down, receiver-down: windows the service is away
    fault_seconds: float  # tempo-faults, receiver-faults: how long faults are injected
    kills: int  # sigkill: how many SIGKILLs
    late_seconds: float  # late-spans: how long late spans are added
    edit_seconds: float  # edits: how long spans flow between two edits (and after the last)
    settle: tuple[int, int]  # settle ages of the rules, seconds
    tail_windows: int  # windows recorded after the faults end, before measuring


FULL = Sizes(down_windows=10, fault_seconds=20, kills=30, late_seconds=15, edit_seconds=10,
             settle=(5, 10), tail_windows=3)
QUICK = Sizes(down_windows=3, fault_seconds=4, kills=3, late_seconds=4, edit_seconds=3,
              settle=(2, 4), tail_windows=2)


# -- rules, spans and the truth ----------------------------------------------------------------

@dataclass(frozen=True)
class RuleFile:
    """The rule file as the harness last wrote it: the shipped default rules with
    ``interval``-second windows, ``query_offset: 1s``, ``start: 20s`` and ``settle`` ages,
    and the edits an operator makes that keep every rule's identity (group, record,
    expression and kind): group ``labels``, ``relabel`` (the rules' ``rename`` gives an
    output label another name: ``{"provider": "upstream"}``), ``missing_value``, and
    ``idle_after`` (None: the default, an hour)."""

    interval: int = INTERVAL
    settle: tuple[int, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    relabel: Mapping[str, str] = field(default_factory=dict)
    missing_value: str | None = None
    idle_after: int | None = None

    def text(self) -> str:
        """The file's YAML; the shipped file's own text (comments kept) with the edits."""
        text = default_rules(interval=self.interval, query_offset=QUERY_OFFSET,
                             start=f"{START_BACK}s", settle=self.settle)
        if not (self.labels or self.relabel or self.missing_value is not None
                or self.idle_after is not None):
            return text
        yaml = YAML()
        data = yaml.load(text)
        (group,) = data["groups"]
        at = list(group).index("rules")
        if self.idle_after is not None:
            group.insert(at, "idle_after", f"{self.idle_after}s")
        if self.labels:
            group.insert(at, "labels", dict(self.labels))
        for rule in group["rules"]:
            rename = rule["rename"]
            for name, label in list(rename.items()):
                rename[name] = self.relabel.get(label, label)
            if self.missing_value is not None:
                rule["missing_value"] = self.missing_value
        out = io.StringIO()
        yaml.dump(data, out)
        return out.getvalue()

    def labels_of(self, labels: Labels) -> Labels:
        """The Prometheus labels (without ``__name__``) this file gives the series that the
        shipped file labels ``labels`` (``model``, ``provider`` and, when the span has one,
        ``api_key_name``)."""
        mapped = dict(labels)
        if self.missing_value is not None:
            mapped = {**dict.fromkeys(BY_LABELS, self.missing_value), **mapped}
        mapped = {self.relabel.get(name, name): value for name, value in mapped.items()}
        mapped.update(self.labels)
        return tuple(sorted(mapped.items()))


BY_LABELS = ("model", "provider", "api_key_name")
"""The output labels of the shipped rules' ``by()`` attributes."""


def write_rules(path: Path, rule_file: RuleFile) -> Metrics:
    """Write ``rule_file`` at ``path`` (replacing the file at once: a reload never reads
    half of it); returns what each of its rules counts or sums."""
    partial = path.with_name(path.name + ".new")
    partial.write_text(rule_file.text())
    try:
        groups = load_rule_files([str(partial)], min_query_offset=0)
    except ConfigError as exc:
        raise ScenarioError(f"the harness wrote a bad rule file: {exc}") from None
    os.replace(partial, path)
    rules = [rule for group in groups for rule in group.rules]
    try:
        if any(rule.kind != "counter" for rule in rules):
            raise ValueError("not a counter")
        return summed_attributes(rules)
    except ValueError:
        raise ScenarioError("the harness knows counters of count_over_time() and "
                            "sum_over_time(span.x) only") from None


def window_spans(end: int, rng: random.Random, metrics: Metrics) -> list[Span]:
    """The spans of window ``(end - 1, end]``: its probe span and random OpenRouter traffic.

    Traffic spans sometimes start exactly on the window end (which belongs to the window),
    each has a ``Provider Attempt`` child span and some a twin in another service: spans the
    default rules must not count.
    """
    spans = [probe_span(end, metrics)]
    for _ in range(rng.randint(0, 4)):
        offset_ns = 0 if rng.random() < 0.1 else rng.randrange(1, 10**9)
        start_ns = end * 10**9 - offset_ns
        spans.extend(openrouter_spans(start_ns, rng))
    return spans


def probe_span(end: int, metrics: Metrics, copy: int = 0) -> Span:
    """The signature of window ``end``: a span of its own model, with every attribute the
    rules sum (``PROBE_VALUES``, exact in binary)."""
    attributes: dict[str, str | int | float | bool] = {
        "gen_ai.request.model": f"{PROBE_PREFIX}{end}",
        "gen_ai.provider.name": "probe",
    }
    for attribute in metrics.values():
        if attribute is not None:
            attributes[attribute] = PROBE_VALUES.get(attribute, 1)
    start_ns = end * 10**9 - 500_000_000 + copy * 1000
    return Span(start_ns=start_ns, attributes=attributes, resource={"service.name": "openrouter"})


def truth(
    spans: Iterable[Span], metrics: Metrics, after: int, upto: int,
    rule_file: RuleFile | None = None,
) -> dict[SeriesKey, float]:
    """The counter totals the default rules must reach over the windows in ``(after, upto]``
    (``tests/support/traffic.py``: their ``LLM Generation`` spans of the ``openrouter`` service by
    model, provider and API key name), keyed by record and the labels ``rule_file`` gives
    them (series it gives the same labels are summed, as the daemon sums them)."""
    rule_file = rule_file or RuleFile()
    result: dict[SeriesKey, float] = {}
    for record, series in span_truth(spans, metrics, after, upto).items():
        for labels, total in series.items():
            key = (record, rule_file.labels_of(labels))
            result[key] = result.get(key, 0.0) + total
    return result


def probe_window(labels: Labels) -> int | None:
    """The window end a probe series stands for, or None for a traffic series."""
    model = dict(labels).get("model", "")
    return int(model[len(PROBE_PREFIX):]) if model.startswith(PROBE_PREFIX) else None


def relative_error(got: float, want: float) -> float:
    if got == want:
        return 0.0
    return math.inf if want == 0 else abs(got - want) / abs(want)


# -- the receiver proxy -----------------------------------------------------------------------


class ReceiverProxy:
    """A remote-write receiver in front of Prometheus that fails on demand.

    ``stop()``/``start()`` take it away and bring it back on the same port (connections
    refused meanwhile). While ``fault_rate`` > 0, each request fails with that probability
    in one of ``fault_kinds``: ``429`` (with ``Retry-After: 1``), ``500``, ``503``,
    ``reset`` (connection dropped, no answer), ``ack-lost`` (forwarded, then answered 503:
    the receiver has the samples, the sender thinks it does not) or ``slow`` (forwarded
    after the sender's timeout, another lost acknowledgement). With ``poison`` set, every
    request holding a series with those labels is refused with 400 ``out of order sample``,
    as Prometheus refuses a whole request for one bad sample. ``upstream`` counts the
    statuses Prometheus answered; with ``watch_stale`` set, ``seen`` collects the series
    of the requests it accepted and ``stale`` their stale markers (series and timestamp).
    """

    KINDS = ("429", "500", "503", "reset", "ack-lost", "slow")

    def __init__(self, upstream: str, rng: random.Random) -> None:
        self._upstream = upstream
        self._rng = rng
        self._runner: web.AppRunner | None = None
        self._client = httpx.AsyncClient(timeout=10.0)
        self.port = 0
        self.fault_rate = 0.0
        self.fault_kinds: Sequence[str] = self.KINDS
        self.poison: Mapping[str, str] | None = None
        self.served: Counter[str] = Counter()
        self.upstream: Counter[int] = Counter()
        self.watch_stale = False
        self.stale: set[tuple[Labels, int]] = set()
        self.seen: set[Labels] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1/write"

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_post("/api/v1/write", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._runner = runner
        self.port = runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def close(self) -> None:
        await self.stop()
        await self._client.aclose()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.read()
        except ConnectionResetError:  # the daemon was killed while it sent: nobody to answer
            raise asyncio.CancelledError() from None
        if self.poison is not None and self._poisoned(body):
            self.served["400 poison"] += 1
            return web.Response(status=400, text="out of order sample\n")
        kind = None
        if self.fault_rate and self._rng.random() < self.fault_rate:
            kind = self._rng.choice(self.fault_kinds)
            self.served[kind] += 1
        if kind == "429":
            return web.Response(status=429, text="too many requests\n",
                                headers={"Retry-After": "1"})
        if kind in ("500", "503"):
            return web.Response(status=int(kind), text="injected failure\n")
        if kind == "reset":
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError()
        if kind == "slow":
            await asyncio.sleep(RECEIVER_TIMEOUT * 1.5)
        status, answer = await self._forward(request, body)
        if kind == "ack-lost":
            return web.Response(status=503, text="injected failure after delivery\n")
        return web.Response(status=status, body=answer)

    async def _forward(self, request: web.Request, body: bytes) -> tuple[int, bytes]:
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in ("host", "content-length", "connection")}
        response = await self._client.post(self._upstream, content=body, headers=headers)
        self.upstream[response.status_code] += 1
        if self.watch_stale and response.is_success:
            for labels, samples, _ in decode_write_request(body):
                self.seen.add(labels)
                self.stale.update((labels, ts) for ts, value in samples if is_stale_nan(value))
        return response.status_code, response.content

    def _poisoned(self, body: bytes) -> bool:
        assert self.poison is not None
        wanted = self.poison.items()
        return any(wanted <= dict(labels).items() for labels, _, _ in decode_write_request(body))


# -- the daemon process -----------------------------------------------------------------------


_EVENT = re.compile(r'"event": "([^"]*)"')
_REREAD = re.compile(r'"reread": (\d+)')  # the engine's "evaluation" log line
_GROWN = re.compile(r'"grown": (\d+)')
_PORT = re.compile(r'"port": (\d+)')


class DaemonProcess:
    """``python -m bridge run --config FILE`` as a child process, its output in a log file."""

    def __init__(self, config: Path, log: Path) -> None:
        self._config = config
        self.log = log
        self._process: subprocess.Popen[bytes] | None = None
        self.kills = 0
        self._started_before = 0

    def start(self) -> None:
        self._started_before = self._started_count()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("TEMPO_BRIDGE_", "NOTIFY_SOCKET", "WATCHDOG_"))}
        env["PYTHONUNBUFFERED"] = "1"  # a SIGKILL must not eat the last log lines
        with self.log.open("ab") as out:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "bridge", "run", "--config", str(self._config)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                env=env,
            )

    def kill(self) -> None:
        """SIGKILL, no warning: whatever the daemon was doing is cut short."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait()
            self.kills += 1

    def exited(self) -> int | None:
        """The exit status if the daemon ended by itself (not killed by us), else None."""
        return None if self._process is None else self._process.poll()

    async def stop(self) -> bool:
        """SIGTERM, as systemd stops it; SIGKILL after 10 s. False if it had to be killed."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return True
        process.terminate()
        try:
            await asyncio.to_thread(process.wait, 10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return False
        return True

    async def reload(self, how: str, within: float = 10.0) -> None:
        """Make the running daemon re-read its rule files, by ``SIGHUP`` or by ``POST
        /-/reload`` on the port its last start logged; return once it reloaded them."""
        reloaded = self._read_log().count('"event": "rules reloaded"')
        if how == "SIGHUP":
            if self._process is None or self._process.poll() is not None:
                raise ScenarioError(f"no daemon to reload:\n{self.tail()}")
            self._process.send_signal(signal.SIGHUP)
        else:
            url = f"http://127.0.0.1:{self.port()}/-/reload"
            async with httpx.AsyncClient(timeout=within) as client:
                response = await client.post(url)
            if response.status_code != 200:
                raise ScenarioError(f"POST {url}: {response.status_code} {response.text}")
        deadline = time.monotonic() + within
        while self._read_log().count('"event": "rules reloaded"') <= reloaded:
            if "reload failed" in self._read_log() or time.monotonic() > deadline:
                raise ScenarioError(f"the daemon did not reload its rules ({how}):\n"
                                    f"{self.tail()}")
            await asyncio.sleep(0.05)

    def port(self) -> int:
        """The port of the web server of the daemon's latest start."""
        text = self._read_log()
        started = text.rfind('"event": "started"')
        end = text.find("\n", started)
        line = text[text.rfind("\n", 0, started) + 1:end if end >= 0 else len(text)]
        match = _PORT.search(line) if started >= 0 else None
        if match is None:
            raise ScenarioError(f"the daemon logged no port:\n{self.tail()}")
        return int(match.group(1))

    def events(self) -> Counter[str]:
        """How many times each log event was written, a killed daemon's included;
        ``settle reads`` sums the recorded windows evaluations read again, ``settle
        growth`` the series they found grown.

        Matched in the raw text, not line by line: a SIGKILL can cut a line before its
        newline, and the next start's first line then follows it on the same line.
        """
        text = self._read_log()
        counts = Counter(_EVENT.findall(text))
        counts["settle reads"] = sum(int(n) for n in _REREAD.findall(text))
        counts["settle growth"] = sum(int(n) for n in _GROWN.findall(text))
        return counts

    def _started_count(self) -> int:
        return self._read_log().count('"event": "started"')

    def _read_log(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    async def wait_started(self, within: float = 30.0) -> None:
        """Wait until the latest start has logged ``started`` (it serves and evaluates)."""
        deadline = time.monotonic() + within
        while self._started_count() <= self._started_before:
            status = self.exited()
            if status is not None or time.monotonic() > deadline:
                raise ScenarioError(f"the daemon did not start (status {status}):\n"
                                    f"{self.tail()}")
            await asyncio.sleep(0.05)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no output)"


# -- one scenario's world ---------------------------------------------------------------------


class ScenarioError(Exception):
    """The scenario could not be carried out (not a finding about the daemon's counters)."""


@dataclass(frozen=True)
class Snapshot:
    """The daemon's state database at one instant: checkpoint per record, outbox depth."""

    checkpoints: Mapping[str, int]
    outbox: int
    settled: Mapping[str, Mapping[int, int]] = field(default_factory=dict)
    """Per record, its settle checkpoint at each age (seconds) it is read again at."""

    def recorded_upto(self, records: Iterable[str]) -> int | None:
        """The last window every rule has recorded, if all of them have started."""
        if set(self.checkpoints) != set(records):
            return None
        return min(self.checkpoints.values())

    def settled_upto(self, records: Iterable[str], age: int) -> int | None:
        """The last window every rule has read again at ``age``, if all of them read
        windows again at that age."""
        ends = [self.settled.get(record, {}).get(age) for record in records]
        return None if None in ends else min(e for e in ends if e is not None)


class Harness:
    """A scenario's Tempo double, receiver proxy, daemon and spans, in ``directory``."""

    def __init__(
        self, name: str, directory: Path, prom: PrometheusServer, sizes: Sizes, seed: int,
        rules: RuleFile,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.directory = directory
        self.prom = prom
        self.sizes = sizes
        self.seed = seed
        self.rng = random.Random(f"{seed}:{name}:faults")
        self.tempo = TempoDouble(query_end_cutoff=0.0)
        self.tempo_port = 0
        self.proxy = ReceiverProxy(prom.write_url, random.Random(f"{seed}:{name}:proxy"))
        self.config = directory / "bridge.yaml"
        self.daemon = DaemonProcess(self.config, directory / "daemon.log")
        self.state_path = directory / "state" / STATE_FILE
        self.t0 = 0  # the first window with spans is (t0, t0 + 1]
        self.rules = rules
        self.earlier: list[RuleFile] = []  # the rule files before the last edit
        self.rules_path = directory / "rules.yaml"
        self.metrics = write_rules(self.rules_path, rules)
        self.spans: list[Span] = []
        self._fed_upto = 0
        self._feeder: asyncio.Task[None] | None = None

    async def start(self) -> None:
        url = await self.tempo.start()
        self.tempo_port = int(url.rsplit(":", 1)[1])
        await self.proxy.start()
        self._write_config(url)
        # spans begin a few windows back, after where the new rules start (START_BACK)
        self.t0 = int(time.time()) // INTERVAL * INTERVAL - 5 * INTERVAL
        self._fed_upto = self.t0
        self._feed()
        self._feeder = asyncio.create_task(self._feed_forever())
        self.daemon.start()

    async def close(self) -> None:
        if self._feeder is not None:
            self._feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._feeder
        await self.daemon.stop()
        await self.tempo.stop()
        await self.proxy.close()

    def _write_config(self, tempo_url: str) -> None:
        write_config(
            self.directory, tempo_url, self.proxy.url,
            tempo={"timeout": f"{int(TEMPO_TIMEOUT * 1000)}ms"},
            remote_write={"timeout": f"{int(RECEIVER_TIMEOUT * 1000)}ms",
                          "external_labels": {"scenario": self.name}},
        )

    # spans ----------------------------------------------------------------------------------

    def _feed(self) -> None:
        """Hand the double the spans of every window up to ``FEED_AHEAD`` seconds from now.

        Each window's spans come from a generator seeded by the window, so what a run holds
        does not depend on when the feeder ran.
        """
        upto = (int(time.time()) + FEED_AHEAD) // INTERVAL * INTERVAL
        new: list[Span] = []
        for end in range(self._fed_upto + INTERVAL, upto + 1, INTERVAL):
            rng = random.Random(f"{self.seed}:{self.name}:{end}")
            new.extend(window_spans(end, rng, self.metrics))
        self._fed_upto = max(self._fed_upto, upto)
        self.add_spans(new)

    async def _feed_forever(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._feed()

    def add_spans(self, spans: Sequence[Span]) -> None:
        self.spans.extend(spans)
        self.tempo.add_spans(spans)

    def edit_rules(self, rules: RuleFile) -> None:
        """Write the rule file anew (the daemon reads it at its next reload or start)."""
        if write_rules(self.rules_path, rules) != self.metrics:
            raise ScenarioError("an edit changed what the rules count")
        self.earlier.append(self.rules)
        self.rules = rules

    def relabelled(self) -> set[SeriesKey]:
        """The series that only earlier rule files gave their labels (each span's series
        under each file): those the last edits relabelled."""
        def given(rules: RuleFile) -> set[SeriesKey]:
            return set(truth(self.spans, self.metrics, self.t0, 2**62, rules))

        old = set().union(*(given(rules) for rules in self.earlier))
        return old - given(self.rules)

    # the daemon's progress ------------------------------------------------------------------

    def snapshot(self) -> Snapshot | None:
        """Checkpoints and outbox depth read in one transaction, or None before the daemon
        has created its state."""
        if not self.state_path.exists():
            return None
        try:
            db = sqlite3.connect(f"file:{self.state_path}?mode=ro", uri=True, timeout=5)
        except sqlite3.Error:
            return None
        try:
            db.execute("BEGIN")
            rows = db.execute("SELECT record, checkpoint FROM rules").fetchall()
            (depth,) = db.execute("SELECT count(*) FROM outbox").fetchone()
            ages = db.execute("SELECT record, age, settle.checkpoint FROM settle "
                              "JOIN rules USING (rule_id)").fetchall()
            db.execute("COMMIT")
        except sqlite3.Error:
            return None
        finally:
            db.close()
        settled: dict[str, dict[int, int]] = {}
        for record, age, checkpoint in ages:
            settled.setdefault(str(record), {})[int(age)] = int(checkpoint)
        return Snapshot({str(r): int(c) for r, c in rows}, int(depth), settled)

    def check_alive(self) -> None:
        status = self.daemon.exited()
        if status is not None:
            raise ScenarioError(f"the daemon exited by itself with status {status}:\n"
                                f"{self.daemon.tail()}")

    async def wait_recorded(self, end: int, *, drained: bool = False,
                            within: float = 60.0) -> Snapshot:
        """Wait until every rule has recorded the window ending at ``end`` (and, with
        ``drained``, the outbox is empty in the same snapshot)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            self.check_alive()
            snap = self.snapshot()
            upto = snap.recorded_upto(self.metrics) if snap else None
            if snap and upto is not None and upto >= end and (not drained or snap.outbox == 0):
                return snap
            await asyncio.sleep(0.1)
        raise ScenarioError(f"the daemon did not record the window ending {end} "
                            f"{'and drain its outbox ' if drained else ''}in {within:.0f} s "
                            f"(last snapshot {self.snapshot()}):\n{self.daemon.tail()}")

    async def wait_settled(self, age: int, end: int, within: float) -> None:
        """Wait until every rule has read the window ending at ``end`` again at ``age``."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            self.check_alive()
            snap = self.snapshot()
            settled = snap.settled_upto(self.metrics, age) if snap else None
            if settled is not None and settled >= end:
                return
            await asyncio.sleep(0.1)
        raise ScenarioError(f"the daemon did not settle the window ending {end} at age "
                            f"{age}s in {within:.0f} s (last snapshot {self.snapshot()}):\n"
                            f"{self.daemon.tail()}")

    async def wait_off_grid(self, interval: int, within: float = 10.0) -> bool:
        """Wait until every rule's checkpoint is the same time, off the grid of
        ``interval``; False if that did not happen ``within`` seconds."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            self.check_alive()
            snap = self.snapshot()
            ends = set(snap.checkpoints.values()) if snap else set()
            if len(ends) == 1 and ends.pop() % interval:
                return True
            await asyncio.sleep(0.02)
        return False

    async def warm_up(self) -> None:
        """Wait until the daemon runs normally: the window due now is recorded."""
        await self.wait_recorded(due_window())


def due_window() -> int:
    """The end of the latest window due now."""
    return int(time.time() - QUERY_OFFSET) // INTERVAL * INTERVAL


# -- scenarios --------------------------------------------------------------------------------


@dataclass
class Injected:
    """What a scenario did: a one-line description, how long the settle passes need
    after it before the windows it touched are final, and what it checks at the end."""

    description: str
    settle_after: int = 0
    since: int = 0
    """Samples missing are counted from this window end on (0: from each series' first)."""
    finish: Callable[[], tuple[str, list[str]]] | None = None
    """Called once the daemon recorded the read time: more description, and problems."""


async def tempo_down(h: Harness) -> Injected:
    """Tempo stops listening for ``down_windows`` windows, then comes back on its port."""
    await h.warm_up()
    windows = h.sizes.down_windows
    await h.tempo.stop()
    await asyncio.sleep(windows * INTERVAL)
    await h.tempo.start(port=h.tempo_port)
    return Injected(f"Tempo refused connections for {windows} windows")


def tempo_fault(rng: random.Random) -> tuple[str, Fault]:
    """One random Tempo failure, and its kind."""
    kind = rng.choice(("5xx", "timeout", "dropped", "partial", "garbage"))
    if kind == "5xx":
        status = rng.choice((500, 502, 503, 504, 429))
        return kind, Response.text(status, f"injected {status}\n")
    if kind == "timeout":
        return kind, Hang(rng.uniform(2, 4) * TEMPO_TIMEOUT)
    if kind == "dropped":
        return kind, CloseConnection()
    if kind == "partial":
        # a cut-off answer whose numbers are wrong: recording it would be seen
        bogus = {"labels": [{"key": "span.gen_ai.request.model",
                             "value": {"stringValue": "partial"}}],
                 "value": 1000, "samples": [{"timestampMs": "0", "value": 1000}]}
        return kind, Response.json({"status": "PARTIAL", "series": [bogus],
                                    "message": "Response exceeds maximum series limit"})
    bodies = [
        b'{"series": [{"labels": [',  # cut off
        b"<html><body>502 Bad Gateway</body></html>",
        b"[]",
        b"null",
        b'"ok"',
        b'{"status": "success", "data": {"resultType": "matrix", "result": []}}',
        b'{"series": {"labels": []}}',
        b'{"series": [{"labels": "model"}]}',
        b'{"series": [{"labels": [], "samples": "none"}]}',
        b'{"series": [{"labels": [{"key": "x", "value": 3}]}]}',
        b"{}",
    ]
    return kind, Response(200, "application/json", rng.choice(bodies))


async def tempo_faults(h: Harness) -> Injected:
    """Random Tempo failures, a few per second, for ``fault_seconds``."""
    await h.warm_up()
    kinds: Counter[str] = Counter()
    deadline = time.monotonic() + h.sizes.fault_seconds
    while time.monotonic() < deadline:
        await asyncio.sleep(h.rng.uniform(0.05, 0.45))
        kind, fault = tempo_fault(h.rng)
        h.tempo.inject(fault)
        kinds[kind] += 1
    while h.tempo.pending_faults:  # every fault is served before measuring
        h.check_alive()
        await asyncio.sleep(0.1)
    return Injected(f"{sum(kinds.values())} Tempo faults ({_counts(kinds)})")


async def receiver_down(h: Harness) -> Injected:
    """The receiver stops listening for ``down_windows`` windows, then comes back."""
    await h.warm_up()
    windows = h.sizes.down_windows
    await h.proxy.stop()
    await asyncio.sleep(windows * INTERVAL)
    await h.proxy.start()
    return Injected(f"receiver refused connections for {windows} windows")


async def receiver_faults(h: Harness) -> Injected:
    """A third of the writes fail for ``fault_seconds``; one series is refused throughout
    (its refusals are counted at the read time: the series may first appear later)."""
    h.proxy.poison = POISON
    await h.warm_up()
    h.proxy.fault_rate = 1 / 3
    await asyncio.sleep(h.sizes.fault_seconds)
    h.proxy.fault_rate = 0.0
    served = Counter(h.proxy.served)
    served.pop("400 poison", 0)

    def finish() -> tuple[str, list[str]]:
        return f"; {h.proxy.served['400 poison']} requests refused for the poison series", []

    return Injected(f"{sum(served.values())} receiver faults ({_counts(served)})",
                    finish=finish)


async def sigkill(h: Harness) -> Injected:
    """SIGKILL the daemon ``kills`` times at random moments, restarting it at once.

    Four kills in five hit a daemon at work (up to 1.5 s after it logged ``started``:
    catching up, committing, sending); the others hit it while it starts.
    """
    await h.warm_up()
    at_work = 0
    for _ in range(h.sizes.kills):
        if h.rng.random() < 0.8:
            await h.daemon.wait_started()
            await asyncio.sleep(h.rng.uniform(0.0, 1.5))
            at_work += 1
        else:
            await asyncio.sleep(h.rng.uniform(0.0, 0.8))
        h.check_alive()
        h.daemon.kill()
        h.daemon.start()
    return Injected(f"{h.daemon.kills} SIGKILLs ({at_work} at work, "
                    f"{h.daemon.kills - at_work} in start-up)")


async def late_spans(h: Harness) -> Injected:
    """For ``late_seconds``, add spans to windows already recorded: young ones (before the
    first settle age) and older ones (between the two ages), so both passes find growth.

    Each late batch holds a second probe span (the window's truth becomes 2 requests), a
    few traffic spans, and sometimes a span of a model never seen before (a new series
    born in a settle pass).
    """
    await h.warm_up()
    first, second = h.sizes.settle
    margin = 0.4
    added: Counter[str] = Counter()
    copies: Counter[int] = Counter()
    deadline = time.monotonic() + h.sizes.late_seconds
    while time.monotonic() < deadline:
        await asyncio.sleep(h.rng.uniform(0.2, 0.5))
        snap = h.snapshot()
        recorded = snap.recorded_upto(h.metrics) if snap else None
        if recorded is None:
            continue
        now = time.time()
        if h.rng.random() < 0.5:
            kind, oldest, youngest = "before the first settle age", first - margin, 0.0
        else:
            kind, oldest, youngest = "between the settle ages", second - margin, first + margin
        ends = [end for end in range(recorded, h.t0, -INTERVAL)
                if youngest <= now - end <= oldest]
        if not ends:
            continue
        end = h.rng.choice(ends)
        copies[end] += 1
        h.add_spans(late_batch(h, end, copies[end]))
        added[kind] += 1
    return Injected(f"{sum(added.values())} late batches ({_counts(added)})",
                    settle_after=second)


def late_batch(h: Harness, end: int, copy: int) -> list[Span]:
    """Late spans of window ``end``: another probe span (its ``copy``-th, so the window's
    truth grows by one probe), up to 3 traffic spans (some exactly on the window end), and
    sometimes a span of a model never seen before (a new series born in a settle pass)."""
    spans = [probe_span(end, h.metrics, copy)]
    for _ in range(h.rng.randint(0, 3)):
        start_ns = end * 10**9 - (0 if h.rng.random() < 0.2 else h.rng.randrange(1, 10**9))
        model = f"late/model-{h.rng.randint(1, 1000)}" if h.rng.random() < 0.2 else None
        spans.extend(openrouter_spans(start_ns, h.rng, model))
    return spans


@dataclass(frozen=True)
class Edit:
    """One edit of the rule file, and how the daemon is made to read it."""

    how: str  # "SIGHUP", "POST /-/reload", or "restart" (SIGTERM, edit, start)
    what: str
    change: Callable[[RuleFile], RuleFile]
    off_grid: int = 0
    """Made when every rule's checkpoint is off the grid of this interval, if not 0: the
    first window the new interval reads is then a transition window."""


def edit_ages(sizes: Sizes) -> tuple[int, int]:
    """The settle ages of ``edits``: the sizes' ages rounded up to whole 2 s windows (an
    age must be a multiple of the interval, and the interval goes to 2 s and back)."""
    first, second = (age + age % 2 for age in sizes.settle)
    return first, second


def edit_steps(first: int, second: int) -> list[Edit]:
    """What ``edits`` does, in order. Every label edit comes before ``idle_after`` is
    shortened, so a stale marker on a series the final rules no longer produce can only
    come from a label edit, and one on a series they produce only from going idle."""
    replace = dataclasses.replace
    return [
        Edit("SIGHUP", "group label team added",
             lambda r: replace(r, labels={"team": "llm"})),
        Edit("POST /-/reload", "interval 1s -> 2s", lambda r: replace(r, interval=2),
             off_grid=2),
        Edit("SIGHUP", "rename provider -> upstream",
             lambda r: replace(r, relabel={"provider": "upstream"})),
        Edit("SIGHUP", f"settle [{first}s] -> []", lambda r: replace(r, settle=())),
        Edit("SIGHUP", "missing_value: none", lambda r: replace(r, missing_value="none")),
        Edit("restart", f"interval 2s -> 1s, settle [] -> [{first}s]",
             lambda r: replace(r, interval=1, settle=(first,))),
        Edit("POST /-/reload", "group label team removed", lambda r: replace(r, labels={})),
        Edit("SIGHUP", "missing_value unset", lambda r: replace(r, missing_value=None)),
        Edit("SIGHUP", "idle_after: 2s", lambda r: replace(r, idle_after=2)),
        Edit("POST /-/reload", f"settle [{first}s] -> [{first}s, {second}s]",
             lambda r: replace(r, settle=(first, second))),
        Edit("SIGHUP", "idle_after: default (1h)", lambda r: replace(r, idle_after=None)),
    ]


def edits_rules(sizes: Sizes) -> RuleFile:
    """The rule file ``edits`` starts from: one-second windows read again at one age."""
    return RuleFile(settle=edit_ages(sizes)[:1])


async def edits(h: Harness) -> Injected:
    """The rule file is edited and reloaded while spans flow: ``edit_steps``, one every
    ``edit_seconds``. The interval goes 1 s -> 2 s -> 1 s (the first change is made when
    every checkpoint is odd, so that the 2 s grid begins with a one-second transition
    window), the settle ages [a] -> [] -> [a] -> [a, b], a group
    label is added and removed, a ``rename`` gives ``provider`` another name for good,
    ``missing_value`` is set and unset, ``idle_after`` is shortened to 2 s and put back,
    by ``SIGHUP``, ``POST /-/reload``, and once by a restart with the file changed while
    the daemon was stopped (SIGTERM, edit, start).

    None of these edits changes a rule's identity (group, record, expression, kind): an
    identity edit starts new totals by design, and the unit tests cover it. So every
    counter must end equal to its truth over every window since ``t0``, across every edit:
    the daemon keeps totals per Tempo series and computes the Prometheus labels when it
    writes, so a label edit re-labels the same totals. The truth is computed per Tempo
    series from the spans, then labelled with the final rule file (``RuleFile.labels_of``);
    the group label added then removed and ``missing_value`` set then unset end where
    they started, the rename does not. A probe series is still one window: lost or
    counted twice shows as in the other scenarios, whatever it was labelled meanwhile.

    While age a is in the settle list, late batches (as in ``late-spans``) go to windows
    younger than a, after every rule's settle checkpoint at a, so that a settle pass must
    add them; before a is removed, the harness waits until every rule has settled those
    windows (a window recorded while no age reads it again would lose its late spans, by
    design). The last edit puts ``idle_after`` back to an hour, so that every series is
    written at the read time.

    Also checked: Prometheus refused no request (the proxy saw no error status from it,
    so no sample was out of order or a duplicate); each series that only earlier rule
    files gave its labels got exactly one stale marker (from the edit that relabelled it:
    no label set comes back once an edit ended it, and ``idle_after`` is shortened only
    after every label edit), and none of them is there at the read time. Samples missing
    are counted from two windows after the last edit: before, by design, 2 s windows
    have no sample at odd seconds and idle series none at all.
    """
    h.proxy.watch_stale = True
    await h.warm_up()
    first, second = edit_ages(h.sizes)
    margin = 0.4
    copies: Counter[int] = Counter()
    hows: Counter[str] = Counter()
    late = 0
    late_upto = 0  # the last window end given late spans
    transitions = 0

    async def phase() -> None:
        """Let spans flow for ``edit_seconds``, adding late spans where they are safe."""
        nonlocal late, late_upto
        deadline = time.monotonic() + h.sizes.edit_seconds
        while time.monotonic() < deadline:
            await asyncio.sleep(h.rng.uniform(0.3, 0.7))
            h.check_alive()
            snap = h.snapshot() if first in h.rules.settle else None
            recorded = snap.recorded_upto(h.metrics) if snap else None
            settled = snap.settled_upto(h.metrics, first) if snap else None
            if recorded is None or settled is None:
                continue
            now = time.time()
            ends = [end for end in range(recorded, max(settled, h.t0), -INTERVAL)
                    if now - end < first - margin]
            if not ends:
                continue
            end = h.rng.choice(ends)
            copies[end] += 1
            h.add_spans(late_batch(h, end, copies[end]))
            late += 1
            late_upto = max(late_upto, end)

    for step in edit_steps(first, second):
        await phase()
        new = step.change(h.rules)
        if first in h.rules.settle and first not in new.settle and late_upto:
            await h.wait_settled(first, late_upto, within=first + 30)
        if step.off_grid:
            transitions += await h.wait_off_grid(step.off_grid)
        if step.how == "restart":
            if not await h.daemon.stop():
                raise ScenarioError(f"the daemon did not stop on SIGTERM:\n{h.daemon.tail()}")
            h.edit_rules(new)
            h.daemon.start()
            await h.daemon.wait_started()
        else:
            h.edit_rules(new)
            await h.daemon.reload(step.how)
        hows[step.how] += 1
    # every series is written at every window end from the first one after the last edit
    snap = h.snapshot()
    since = (snap.recorded_upto(h.metrics) or 0) if snap else 0
    await phase()

    def finish() -> tuple[str, list[str]]:
        problems = []
        refused = {status: n for status, n in h.proxy.upstream.items() if status >= 400}
        if refused:
            problems.append(f"Prometheus answered requests with errors: {refused} "
                            "(status: requests)")
        markers = Counter(labels for labels, _ts in h.proxy.stale)
        old = h.relabelled()
        relabelled = {labels for labels in h.proxy.seen if _key(labels) in old}
        wrong = {labels: markers[labels] for labels in relabelled if markers[labels] != 1}
        if wrong:
            labels, n = min(wrong.items())
            problems.append(f"{len(wrong)} series the final rules no longer produce have not "
                            f"one stale marker each, such as {labels}: {n}")
        ended = sum(markers[labels] for labels in relabelled)
        idle = sum(markers.values()) - ended
        return (f"; {len(h.proxy.stale)} stale markers ({ended} ending relabelled series, "
                f"{idle} idle)", problems)

    return Injected(
        f"{sum(hows.values())} edits ({_counts(hows)}), {transitions} of them with every "
        f"checkpoint off the new interval's grid, {late} late batches",
        settle_after=second, since=since + 2 * INTERVAL if since else 0, finish=finish,
    )


def _key(labels: Labels) -> SeriesKey:
    """A series as the truth keys it: its record, and its labels without ``__name__`` and
    the scenario's external label."""
    named = dict(labels)
    record = named.pop("__name__", "")
    named.pop("scenario", None)
    return record, tuple(sorted(named.items()))


Scenario = Callable[[Harness], Awaitable[Injected]]

SCENARIOS: Mapping[str, Scenario] = {
    "tempo-down": tempo_down,
    "tempo-faults": tempo_faults,
    "receiver-down": receiver_down,
    "receiver-faults": receiver_faults,
    "sigkill": sigkill,
    "late-spans": late_spans,
    "edits": edits,
}


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items(), key=lambda i: -i[1]))


# -- measuring --------------------------------------------------------------------------------


@dataclass
class Row:
    """One scenario's result: one line of the table."""

    scenario: str
    injected: str = ""
    daemon_saw: str = ""
    expected: int = 0
    recorded: int = 0
    lost: int = 0
    double_counted: int = 0
    max_error: float = math.inf
    gaps: int = 0  # reported, not a failure: a later sample of the series carries the total
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (not self.problems and self.expected > 0 and self.recorded == self.expected
                and self.lost == 0 and self.double_counted == 0 and self.max_error <= TOLERANCE)


def prometheus_totals(prom: PrometheusServer, scenario: str, at: int) -> dict[SeriesKey, float]:
    """The value of every counter of ``scenario`` at ``at``, read back with PromQL."""
    result = {}
    for item in prom.query(f'{{__name__=~"openrouter_.+", scenario="{scenario}"}}', time=at):
        metric = dict(item["metric"])
        record = metric.pop("__name__")
        metric.pop("scenario")
        result[(record, tuple(sorted(metric.items())))] = float(item["value"][1])
    return result


def prometheus_gaps(prom: PrometheusServer, scenario: str, since: int, at: int) -> int:
    """Window ends without a sample in Prometheus, from each series' first sample (or
    ``since``, when later) to ``at``.

    The daemon writes every known series at every window end (a new series from the end
    before its first window), so any missing one is a sample that never arrived.
    """
    selector = f'{{__name__=~"openrouter_.+", scenario="{scenario}"}}[{at - since + 5}s]'
    missing = 0
    for item in prom.query(selector, time=at):
        stamps = [int(float(ts)) for ts, _ in item["values"]]
        first = max(min(stamps), since)
        missing += (at - first) // INTERVAL + 1 - sum(1 for ts in stamps if ts >= first)
    return missing


def compare(row: Row, got: Mapping[SeriesKey, float], want: Mapping[SeriesKey, float],
            t0: int, upto: int, excluded: Sequence[SeriesKey] = ()) -> None:
    """Fill ``row``'s window counts and largest error from PromQL totals and the truth.

    Request and token counters are sums of integers: they must be exact, not only within
    the tolerance that cost sums (floats) get.
    """
    windows = range(t0 + INTERVAL, upto + 1, INTERVAL)
    lost: set[int] = set()
    doubled: set[int] = set()
    missing: set[int] = set()
    inexact: list[SeriesKey] = []
    row.max_error = 0.0
    for key in sorted(set(got) | set(want)):
        if key in excluded:
            continue
        have, expect = got.get(key, 0.0), want.get(key, 0.0)
        error = relative_error(have, expect)
        row.max_error = max(row.max_error, error)
        end = probe_window(key[1])
        if end is None:
            if error and "cost" not in key[0]:
                inexact.append(key)
            continue
        if end == upto + INTERVAL and have == 0 == expect:
            # the next window's probe series, first written as 0 at ``upto`` (the end of
            # the window before its own): the daemon recorded that window before the read
            continue
        if have == 0:
            missing.add(end)
        if error > TOLERANCE:
            (lost if have < expect else doubled).add(end)
    row.expected = len(windows)
    row.recorded = sum(1 for end in windows if end not in missing)
    row.lost = len(lost)
    row.double_counted = len(doubled)
    if inexact:
        row.problems.append(f"{len(inexact)} request or token counters are not exact, "
                            f"such as {inexact[0]}: {got.get(inexact[0])} != "
                            f"{want.get(inexact[0])}")
    strays = sorted((lost | doubled | missing) - set(windows))
    if strays:
        row.problems.append(f"probe series outside the measured windows: {strays[:5]}")


def daemon_saw(events: Mapping[str, int]) -> str:
    """The failures the daemon logged, so that a row shows its faults were felt."""
    parts = []
    restarts = events.get("started", 0) - 1
    if restarts > 0:
        parts.append(f"{restarts} restarts")
    failed = events.get("evaluation failed", 0) + events.get("settle failed", 0)
    if failed:
        parts.append(f"{failed} failed queries")
    if settles := events.get("settle reads", 0):
        parts.append(f"{settles} windows read again ({events.get('settle growth', 0)} "
                     "grown series)")
    if retries := events.get("remote write failed, retrying", 0):
        parts.append(f"{retries} send retries")
    if rejected := events.get("remote write rejected", 0):
        parts.append(f"{rejected} rejected sends")
    if reloads := events.get("rules reloaded", 0):
        parts.append(f"{reloads} reloads")
    return ", ".join(parts) or "nothing"


async def run_scenario(
    name: str, sizes: Sizes, prom: PrometheusServer, directory: Path, seed: int = 1
) -> Row:
    """Run one scenario against a fresh daemon; the row says what Prometheus ended with."""
    row = Row(name)
    started = time.monotonic()
    shutil.rmtree(directory, ignore_errors=True)  # a kept directory of an earlier run
    rules = edits_rules(sizes) if name == "edits" else RuleFile(settle=sizes.settle)
    h = Harness(name, directory, prom, sizes, seed, rules)
    try:
        await h.start()
        injected = await SCENARIOS[name](h)
        row.injected = injected.description
        target = due_window() + (injected.settle_after + sizes.tail_windows) * INTERVAL
        await h.wait_recorded(target, drained=True, within=60 + target - time.time())
        got = await asyncio.to_thread(prometheus_totals, prom, name, target)
        want = truth(h.spans, h.metrics, h.t0, target, h.rules)
        poison = [k for k in want if name == "receiver-faults" and _is_poison(k)]
        if poison and any(k in got for k in poison):
            row.problems.append("the poison series reached Prometheus")
        relabelled = h.relabelled()
        old = sorted(k for k in got if k in relabelled)
        if old:  # not ended by a stale marker
            row.problems.append(f"{len(old)} series under labels the rules no longer give are "
                                f"still there at the read time, such as {old[0]}")
        compare(row, got, want, h.t0, target, excluded=[*poison, *old])
        row.gaps = await asyncio.to_thread(prometheus_gaps, prom, name,
                                           injected.since or h.t0, target)
        if injected.finish is not None:
            more, problems = injected.finish()
            row.injected += more
            row.problems.extend(problems)
    except ScenarioError as exc:
        row.problems.append(str(exc))
    finally:
        await h.close()
        row.daemon_saw = daemon_saw(h.daemon.events())
        row.seconds = time.monotonic() - started
    return row


def _is_poison(key: SeriesKey) -> bool:
    record, labels = key
    return {"__name__": record, **dict(labels)}.items() >= POISON.items()


# -- the table --------------------------------------------------------------------------------

COLUMNS = ("scenario", "faults injected", "the daemon logged", "windows expected",
           "recorded", "lost", "double-counted", "max relative error", "samples missing",
           "time")


def table_header() -> str:
    return "| " + " | ".join(COLUMNS) + " |\n|" + "|".join(
        "---" if i < 3 else "---:" for i in range(len(COLUMNS))) + "|"


def table_row(row: Row) -> str:
    error = "-" if math.isinf(row.max_error) and not row.expected else f"{row.max_error:.1e}"
    if row.max_error == 0:
        error = "0"
    cells = (row.scenario, row.injected, row.daemon_saw, str(row.expected), str(row.recorded),
             str(row.lost), str(row.double_counted), error, str(row.gaps),
             f"{row.seconds:.0f} s")
    return "| " + " | ".join(cells) + " |"


async def run_all(names: Sequence[str], sizes: Sizes, prom: PrometheusServer, directory: Path,
                  seed: int) -> list[Row]:
    rows = []
    print(table_header(), flush=True)
    for name in names:
        row = await run_scenario(name, sizes, prom, directory / name, seed)
        rows.append(row)
        print(table_row(row), flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true",
                        help="CI sizes: 3 windows down, 4 s of faults, 3 kills, "
                             "3 s between edits")
    parser.add_argument("--scenario", action="append", choices=list(SCENARIOS),
                        help="run only this scenario (repeatable; default: all)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the spans and faults")
    parser.add_argument("--keep", type=Path,
                        help="keep logs, configs and state in this directory")
    args = parser.parse_args(argv)
    names: list[str] = args.scenario or list(SCENARIOS)
    sizes = QUICK if args.quick else FULL
    with contextlib.ExitStack() as stack:
        directory = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        shutil.rmtree(directory / "prometheus", ignore_errors=True)
        prom = stack.enter_context(start_prometheus(directory / "prometheus"))
        print(f"# reliability/faults.py {'--quick ' if args.quick else ''}--seed {args.seed}: "
              f"{sizes}, Prometheus {prom.url}", flush=True)
        rows = asyncio.run(run_all(names, sizes, prom, directory, args.seed))
    failed = [r for r in rows if not r.ok]
    for row in failed:
        print(f"FAILED {row.scenario}: lost {row.lost}, double-counted {row.double_counted}, "
              f"recorded {row.recorded}/{row.expected}, max error {row.max_error:.3g}",
              file=sys.stderr)
        for problem in row.problems:
            print(f"  {problem}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
