"""``tempo-bridge doctor``: exact report lines and exit codes.

Tempo is a small HTTP server answering with the real Tempo 3.0.3 captures
(``/api/status/buildinfo``, ``/status/config`` and an instant query), or with copies of
``/status/config`` changed one setting at a time. The receiver is a real Prometheus 2.42,
with and without ``--web.enable-remote-write-receiver`` and with an out-of-order window.
"""

from __future__ import annotations

import email.utils
import json
import math
import os
import re
import sqlite3
import struct
import threading
import time
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest

from bridge.cli import main
from bridge.components import STATE_FILE
from bridge.config import Config
from bridge.doctor import (
    Finding,
    check_clock_skew,
    check_state,
    exemplars_per_window,
    parse_go_duration,
    read_prometheus_config,
    read_tempo_settings,
    read_tenant_max_duration,
)
from bridge.errors import StateError
from bridge.evaluation import Update
from bridge.remote_write import encode_batches
from bridge.series import Labels, Sample
from bridge.state import RuleKey, State
from bridge.tempo import ClockSkew
from bridge.totals import Total
from tests.doubles.captures import find_tempo_api, load_capture
from tests.support.files import Rule, write_rules
from tests.support.files import write_config as write_bridge_config
from tests.support.prometheus import PrometheusServer, start_prometheus
from tests.support.servers import free_port

pytestmark = pytest.mark.prometheus

CAPTURES = find_tempo_api() / "captures"
STATUS_CONFIG = (CAPTURES / "status_config.yaml").read_text()
BUILDINFO = (CAPTURES / "status_buildinfo.json").read_bytes()
INSTANT = load_capture(CAPTURES / "21_instant_no_match.http")
TOKEN = "s3cr3t-token-value"  # a secret the report must never show
DOCTOR_DATA = Path(__file__).parent / "fixtures" / "doctor"


def overrides_page(name: str, tenant: str) -> bytes:
    """Tempo's /status/overrides/{tenant} JSON, from tests/fixtures/doctor."""
    text = (DOCTOR_DATA / f"overrides_{name}.json").read_text()
    return text.replace('"TENANT"', json.dumps(tenant)).encode()

SLACK_2H = "        ingestion_time_range_slack: 2h0m0s\n"
CUTOFF_30S = "    query_end_cutoff: 30s\n"
MAX_DURATION_24H = "        max_duration: 24h0m0s\n"
MAX_INTERVALS_10000 = "        max_intervals: 10000\n"


def tempo_config(old: str, new: str) -> str:
    """The captured /status/config with one line changed."""
    assert STATUS_CONFIG.count(old) == 1, old
    return STATUS_CONFIG.replace(old, new)


class FakeTempo:
    """Answers the paths doctor asks for with captured bodies; records each request."""

    def __init__(self) -> None:
        self.status_config: tuple[int, bytes] = (200, STATUS_CONFIG.encode())
        self.clock_ahead = 0.0  # seconds Tempo's Date header is ahead of the host's clock
        self.query: tuple[int, bytes] = (INSTANT.status, INSTANT.body)
        # /status/overrides/{tenant} by tenant; any other tenant has the default overrides
        self.overrides: dict[str, tuple[int, bytes]] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.partition("?")[0]
                fake.requests.append((path, dict(self.headers)))
                if path == "/api/status/buildinfo":
                    status, body, kind = 200, BUILDINFO, "application/json"
                elif path == "/status/config":
                    (status, body), kind = fake.status_config, "text/plain; charset=utf-8"
                elif path.startswith("/status/overrides/"):
                    tenant = unquote(path.removeprefix("/status/overrides/"))
                    status, body = fake.overrides.get(
                        tenant, (200, overrides_page("defaults", tenant)))
                    kind = "application/json"
                    if "application/json" not in self.headers.get("Accept", ""):
                        body, kind = b"<html>tenant status page</html>", "text/html"
                    if status != 200:
                        kind = "text/plain; charset=utf-8"
                elif path == "/api/metrics/query":
                    (status, body), kind = fake.query, "application/json"
                    if status != 200:
                        kind = "text/plain; charset=utf-8"
                else:
                    status, body, kind = 404, b"404 page not found\n", "text/plain"
                self._answer(status, body, kind)

            def do_POST(self) -> None:
                # A receiver that is not Prometheus (Mimir's path): takes any write.
                path = self.path.partition("?")[0]
                fake.requests.append((path, dict(self.headers)))
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if path == "/api/v1/push":
                    self._answer(200, b"", "text/plain")
                else:
                    self._answer(404, b"404 page not found\n", "text/plain")

            def _answer(self, status: int, body: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

            def date_time_string(self, timestamp: float | None = None) -> str:
                return email.utils.formatdate(time.time() + fake.clock_ahead, usegmt=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@pytest.fixture
def tempo() -> Iterator[FakeTempo]:
    fake = FakeTempo()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def prom_without_receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    with start_prometheus(
        tmp_path_factory.mktemp("prometheus-off"), remote_write_receiver=False
    ) as server:
        yield server


@pytest.fixture(scope="module")
def prom_out_of_order(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    with start_prometheus(
        tmp_path_factory.mktemp("prometheus-ooo"), out_of_order_time_window="2h"
    ) as server:
        yield server


def write_config(
    directory: Path, tempo_url: str, write_url: str, *, tempo: Mapping[str, object] = {},
    remote_write: Mapping[str, object] = {}, interval: str = "1m", tenant: str | None = None,
) -> Path:
    """One group ``costs`` (query offset 2m) and a config with Tempo's default cutoff and
    ingest delay, changed by ``tempo`` and ``remote_write``."""
    write_rules(directory / "rules.yaml", Rule("requests_total", "{ } | count_over_time()"),
                group="costs", interval=interval, query_offset="2m", settle=None,
                tenant=tenant)
    return write_bridge_config(
        directory, tempo_url, write_url,
        tempo={"query_end_cutoff": None, "ingest_delay": None, **tempo},
        remote_write=remote_write, state_dir=None, web=None,
    )


def doctor(
    capsys: pytest.CaptureFixture[str], config: Path, *args: str
) -> tuple[int, list[str]]:
    """Doctor's exit code and lines, but for the state's line (the last finding), which
    must say that the config's state is not there yet (see the state's own tests)."""
    code, lines = doctor_all(capsys, config, *args)
    assert lines.pop(-2) == (
        f"OK   no state at {config.parent / 'data' / STATE_FILE} yet: each rule begins at "
        "its group's start"
    )
    return code, lines


def doctor_all(
    capsys: pytest.CaptureFixture[str], config: Path, *args: str
) -> tuple[int, list[str]]:
    code = main(["doctor", "--config", str(config), *args])
    out = capsys.readouterr().out
    return code, out.splitlines()


def group_at(config: Path) -> str:
    return f"group costs ({config.parent / 'rules.yaml'}:2)"


CLOCK_OK = "OK   Tempo's clock agrees with this host's (to the Date header's second)"


def tempo_ok(url: str) -> list[str]:
    return [
        f"OK   Tempo 3.0.3 (revision 1900ed7b) answers at {url}",
        "OK   Tempo answers TraceQL metrics queries",
    ]


SLACK_OK = (
    "OK   Tempo's live_store.wal.ingestion_time_range_slack is 2h, enough for requests up to "
    "10m long"
)
CUTOFF_OK = "OK   Tempo's query_frontend.query_end_cutoff is 30s, as in tempo.query_end_cutoff"
OFFSETS_OK = (
    "OK   every group's query_offset is at least Tempo's query_frontend.query_end_cutoff plus "
    "ingest_delay (45s)"
)
MAX_DURATION_OK = (
    "OK   Tempo's query_frontend.metrics.max_duration is 24h, as in tempo.max_duration"
)
MAX_INTERVALS_OK = (
    "OK   Tempo's query_frontend.metrics.max_intervals is 10000, as in tempo.max_intervals"
)
RESPONSE_SERIES_OK = (
    "OK   Tempo's query_frontend.metrics.max_response_series is not set (no limit): Tempo "
    "answers every series"
)
TENANT_OK = (
    "OK   Tempo sets no read.max_metrics_duration for tenant single-tenant: "
    "query_frontend.metrics.max_duration applies"
)
WINDOW_EXEMPLARS = (
    "Tempo gives at most 50 exemplars for the window a steady-state query reads "
    "(query_frontend.metrics.max_exemplars 100)"
)


def exemplars_ok(config: Path) -> str:
    """The exemplar line of write_config's group: one rule without by(), one series."""
    return (f"OK   {group_at(config)}: {WINDOW_EXEMPLARS}, enough for exemplars_per_series 1 "
            "on each of 50 series of a rule; its rules have at most 1 series")


def receiver_ok(prom: PrometheusServer, sample_age: str) -> list[str]:
    return [f"OK   the receiver at {prom.write_url} accepts remote write", sample_age]


AGE_OK = "OK   remote_write.max_sample_age 50m suits Prometheus 2.42.0+ds (no out-of-order window)"


# -- everything fine ----------------------------------------------------------------------------


def test_real_tempo_config_and_prometheus_pass(
    tmp_path: Path, tempo: FakeTempo, prom: PrometheusServer, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, tempo.url, prom.write_url)
    code, lines = doctor(capsys, config)
    assert lines == [
        *tempo_ok(tempo.url), SLACK_OK, CUTOFF_OK, OFFSETS_OK, MAX_DURATION_OK,
        MAX_INTERVALS_OK, RESPONSE_SERIES_OK, exemplars_ok(config), TENANT_OK, CLOCK_OK,
        *receiver_ok(prom, AGE_OK),
        "no problems found",
    ]
    assert code == 0
    asked = [path for path, _ in tempo.requests]
    assert asked == ["/api/status/buildinfo", "/api/metrics/query", "/status/config",
                     "/status/overrides/single-tenant"]


# -- Tempo's settings ---------------------------------------------------------------------------


def test_slack_shorter_than_the_longest_request(
    tmp_path: Path, tempo: FakeTempo, prom: PrometheusServer, capsys: pytest.CaptureFixture[str]
) -> None:
    tempo.status_config = (200, tempo_config(SLACK_2H, SLACK_2H.replace("2h0m0s", "2m0s")).encode())
    config = write_config(tmp_path, tempo.url, prom.write_url)
    code, lines = doctor(capsys, config)
    assert code == 1
    assert lines[2] == (
        "WARN Tempo's live_store.wal.ingestion_time_range_slack is 2m, shorter than the longest "
        "expected request (10m): Tempo drops spans that arrive more than 2m after they "
        "started; raise it in Tempo's config to at least 10m (or give doctor "
        "--longest-request if requests are shorter)"
    )
    assert lines[-1] == "1 problem found"
    # the operator says requests are short: fine
    code, lines = doctor(capsys, config, "--longest-request", "90s")
    assert code == 0
    assert lines[2] == (
        "OK   Tempo's live_store.wal.ingestion_time_range_slack is 2m, enough for requests up "
        "to 1m30s long"
    )


def test_slack_of_an_older_layout(
    tmp_path: Path, tempo: FakeTempo, prom: PrometheusServer, capsys: pytest.CaptureFixture[str]
) -> None:
    # Without live_store's, the ingesters' slack of storage.trace.wal (Tempo 2) is read.
    tempo.status_config = (200, tempo_config(SLACK_2H, "").encode())
    config = write_config(tmp_path, tempo.url, prom.write_url)
    code, lines = doctor(capsys, config, "--longest-request", "2m")
    assert code == 0
    assert lines[2] == (
        "OK   Tempo's storage.trace.wal.ingestion_time_range_slack is 2m, enough for requests "
        "up to 2m long"
    )


def test_cutoff_differs_and_is_longer_than_a_group_allows(
    tmp_path: Path, tempo: FakeTempo, prom: PrometheusServer, capsys: pytest.CaptureFixture[str]
) -> None:
    tempo.status_config = (200, tempo_config(CUTOFF_30S, "    query_end_cutoff: 2m0s\n").encode())
    config = write_config(tmp_path, tempo.url, prom.write_url)
    code, lines = doctor(capsys, config)
    assert code == 1
    assert lines[3:5] == [
        "WARN Tempo's query_frontend.query_end_cutoff is 2m but the bridge's "
        "tempo.query_end_cutoff is 30s; set tempo.query_end_cutoff: 2m in the bridge's config",
        f"WARN {group_at(config)}: query_offset 2m minus ingest_delay 15s is less than Tempo's "
        "query_frontend.query_end_cutoff 2m, so Tempo leaves out the end of its windows; raise "
        "query_offset to at least 2m15s",
    ]
    assert lines[-1] == "2 problems found"


def test_max_duration_shorter_than_two_intervals(
    tmp_path: Path, tempo: FakeTempo, prom: PrometheusServer, capsys: pytest.CaptureFixture[str]
) -> None:
    tempo.status_config = (
        200, tempo_config(MAX_DURATION_24H, "        max_duration: 1m30s\n").encode()
    )
    config = write_config(tmp_path, tempo.url, prom.write_url)
    code, lines = doctor(capsys, config)
    assert code == 1
    assert lines[5:7] == [
        "WARN Tempo's query_frontend.metrics.max_duration is 1m30s, shorter than the bridge's "
        "tempo.max_duration 24h: Tempo refuses the longer catch-up queries; set "
        "tempo.max_duration: 1m30s in the bridge's config",
        f"FAIL {group_at(config)}: Tempo's query_frontend.metrics.max_duration 1m30s is less "
        "than two intervals (2m), so missed windows can never be caught up; raise "
        "query_frontend.metrics.max_duration in Tempo's config to at least 2m",
    ]


def test_max_duration_longer_than_the_bridges(
    tmp_path: Path, tempo: FakeTempo, prom: PrometheusServer, capsys: pytest.CaptureFixture[str]
) -> None:
    tempo.status_config = (
        200, tempo_config(MAX_DURATION_24H, "        max_duration: 168h0m0s\n").encode()
    )
    config = write_config(tmp_path, tempo.url, prom.write_url)
    code, lines = doctor(capsys, config)
    assert code == 1
    assert lines[5] == (
        "WARN Tempo's query_frontend.metrics.max_duration is 168h but the bridge's "
        "tempo.max_duration is 24h: catch-up takes more queries than needed; set "
        "tempo.max_duration: 168h in the bridge's config"
    )
    # mirrored in the bridge's config: fine
    config = write_config(tmp_path, tempo.url, prom.write_url, tempo={"max_duration": "1w"})
    code, lines = doctor(capsys, config)
    assert code == 0
    assert lines[5] == (
        "OK   Tempo's query_frontend.metrics.max_duration is 168h, as in tempo.max_duration"
    )


def test_settings_missing_from_status_config(
    tmp_path: Path, tempo: FakeTempo, prom: PrometheusServer, capsys: pytest.CaptureFixture[str]
) -> None:
    tempo.status_config = (200, b"target: all\n")
    config = write_config(tmp_path, tempo.url, prom.write_url)
    code, lines = doctor(capsys, config)
    assert code == 1
    assert lines[2:5] == [
        "WARN Tempo's /status/config shows no live_store.wal.ingestion_time_range_slack: cannot "
        "tell whether Tempo keeps the spans of requests up to 10m long",
        "WARN Tempo's /status/config shows no query_frontend.query_end_cutoff: cannot check "
        "tempo.query_end_cutoff (30s) and the groups' query_offset against it",
        "WARN Tempo's /status/config shows no query_frontend.metrics.max_duration: cannot check "
        "tempo.max_duration (24h) against it",
    ]


def test_status_config_not_served(
    tmp_path: Path, tempo: FakeTempo, prom: PrometheusServer, capsys: pytest.CaptureFixture[str]
) -> None:
    tempo.status_config = (404, b"404 page not found\n")
    config = write_config(tmp_path, tempo.url, prom.write_url)
    code, lines = doctor(capsys, config)
    assert code == 1
    assert lines == [
        *tempo_ok(tempo.url),
        "WARN cannot read Tempo's /status/config (GET /status/config: Tempo answered 404: 404 "
        "page not found): its slack, query_end_cutoff and max_duration are not checked",
        TENANT_OK, CLOCK_OK,
        *receiver_ok(prom, AGE_OK),
        "1 problem found",
    ]


def test_max_intervals_below_the_bridges(
    tmp_path: Path, tempo: FakeTempo, prom: PrometheusServer, capsys: pytest.CaptureFixture[str]
) -> None:
    tempo.status_config = (
        200, tempo_config(MAX_INTERVALS_10000, "        max_intervals: 1440\n").encode())
    config = write_config(tmp_path, tempo.url, prom.write_url)
    code, lines = doctor(capsys, config)
    assert code == 1
    assert lines[6] == (
        "WARN Tempo's query_frontend.metrics.max_intervals is 1440, less than the bridge's "
        "tempo.max_intervals 10000: Tempo refuses the catch-up queries of more steps; set "
        "tempo.max_intervals: 1440 in the bridge's config"
    )
    # mirrored in the bridge's config: fine; Tempo's above the bridge's: fine too
    config = write_config(tmp_path, tempo.url, prom.write_url, tempo={"max_intervals": 1440})
    code, lines = doctor(capsys, config)
    assert code == 0
    assert lines[6] == (
        "OK   Tempo's query_frontend.metrics.max_intervals is 1440, as in tempo.max_intervals")
    tempo.status_config = (200, STATUS_CONFIG.encode())
    code, lines = doctor(capsys, config)
    assert lines[6] == (
        "OK   Tempo's query_frontend.metrics.max_intervals is 10000, more than "
        "tempo.max_intervals (1440)")
    tempo.status_config = (200, tempo_config(MAX_INTERVALS_10000, "").encode())
    code, lines = doctor(capsys, config)
    assert lines[6] == (
        "OK   Tempo's /status/config shows no query_frontend.metrics.max_intervals: Tempo sets "
        "no limit on the steps of a range query; the bridge keeps to 1440")


def test_max_response_series_below_rule_limits(
    tmp_path: Path, tempo: FakeTempo, prom: PrometheusServer, capsys: pytest.CaptureFixture[str]
) -> None:
    tempo.status_config = (200, tempo_config(
        MAX_INTERVALS_10000, MAX_INTERVALS_10000 + "        max_response_series: 1000\n"
    ).encode())
    config = write_config(tmp_path, tempo.url, prom.write_url)
    with (tmp_path / "rules.yaml").open("a") as rules:
        rules.write(
            "      - {record: cost_total, expr: '{ } | sum_over_time(span.cost) by (span.m)',\n"
            "         kind: counter, limit: 5000}\n"
            "      - {record: tokens_total, expr: '{ } | sum_over_time(span.t) by (span.m)',\n"
            "         kind: counter, limit: 1000}\n"
            "  - name: small\n    rules:\n"
            "      - {record: errors_total, expr: '{ } | count_over_time()', kind: counter,\n"
            "         limit: 10}\n"
        )
    code, lines = doctor(capsys, config)
    assert code == 1
    assert lines[7] == (
        f"WARN {group_at(config)}: Tempo's query_frontend.metrics.max_response_series is 1000, "
        "below the series these rules allow: requests_total (no limit), cost_total (limit "
        "5000); an answer with more series comes back partial, which the bridge never "
        "records, so the rule fails every evaluation; set limit: 1000 or less on them, or "
        "raise query_frontend.metrics.max_response_series in Tempo's config"
    )
    # the same limits against the exemplars of one window
    assert lines[8] == (
        f"WARN {group_at(config)}: {WINDOW_EXEMPLARS}, so with exemplars_per_series 1 at most "
        "50 series of a rule get all their exemplars in a window: cost_total (limit 5000), "
        "tokens_total (limit 1000) can have more, and the rest get fewer or none; raise "
        "query_frontend.metrics.max_exemplars in Tempo's config (up to 100: Tempo keeps no "
        "more per query), lower exemplars_per_series, or set exemplars: false"
    )
    assert lines[9].startswith(f"OK   group small ({config.parent / 'rules.yaml'}:")
    assert lines[10] == TENANT_OK
    assert lines[-1] == "2 problems found"
    # every rule within the limit
    (tmp_path / "rules.yaml").write_text(
        "groups:\n  - name: costs\n    rules:\n"
        "      - {record: a_total, expr: '{ } | count_over_time()', kind: counter, limit: 1000}\n"
    )
    code, lines = doctor(capsys, config)
    assert code == 0
    assert lines[7] == (
        "OK   Tempo's query_frontend.metrics.max_response_series is 1000, at least every "
        "rule's limit")


MAX_EXEMPLARS_100 = "        max_exemplars: 100\n"


def test_exemplars_one_window_covers(
    tmp_path: Path, tempo: FakeTempo, prom: PrometheusServer, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, tempo.url, prom.write_url)
    rules = tmp_path / "rules.yaml"
    rules.write_text(rules.read_text().replace(
        "    rules:\n", "    exemplars_per_series: 2\n    rules:\n", 1) + (
        "      - {record: cost_total, expr: '{ } | sum_over_time(span.cost) by (span.m)',\n"
        "         kind: counter}\n"
        "  - name: quiet\n    exemplars: false\n    rules:\n"
        "      - {record: tokens_total, expr: '{ } | sum_over_time(span.t) by (span.m)',\n"
        "         kind: counter, limit: 100000}\n"))
    # a rule with by() and no limit: what is known; a group without exemplars: no line
    code, lines = doctor(capsys, config)
    assert code == 0
    assert lines[8:10] == [
        f"OK   {group_at(config)}: {WINDOW_EXEMPLARS}, enough for exemplars_per_series 2 on "
        "each of 25 series of a rule; cost_total set no limit, so doctor cannot tell whether "
        "they have more series in a window (those beyond get none)",
        TENANT_OK,
    ]
    # Tempo keeps 100 at most per query, whatever max_exemplars says; 10: 6 in the window
    for setting, window, covered in [
        ("500", "Tempo gives at most 50 exemplars for the window a steady-state query reads "
                "(query_frontend.metrics.max_exemplars 500, of which Tempo keeps 100 per "
                "query)", 25),
        ("10", "Tempo gives at most 6 exemplars for the window a steady-state query reads "
               "(query_frontend.metrics.max_exemplars 10)", 3),
        (None, "Tempo gives at most 50 exemplars for the window a steady-state query reads "
               "(query_frontend.metrics.max_exemplars not shown, Tempo's default 100)", 25),
    ]:
        new = "" if setting is None else f"        max_exemplars: {setting}\n"
        tempo.status_config = (200, tempo_config(MAX_EXEMPLARS_100, new).encode())
        code, lines = doctor(capsys, config)
        assert lines[8].startswith(f"OK   {group_at(config)}: {window}, enough for "
                                   f"exemplars_per_series 2 on each of {covered} series")
    # 0: no exemplar at all, not even for one series
    tempo.status_config = (200, tempo_config(MAX_EXEMPLARS_100, "        max_exemplars: 0\n")
                           .encode())
    code, lines = doctor(capsys, config)
    assert code == 1
    assert lines[8].startswith(
        f"WARN {group_at(config)}: Tempo gives at most 0 exemplars for the window a "
        "steady-state query reads (query_frontend.metrics.max_exemplars 0), so with "
        "exemplars_per_series 2 at most 0 series of a rule get all their exemplars in a "
        "window: requests_total can have more")


def test_exemplars_per_window() -> None:
    # Tempo's slices: two exemplars in each of max_exemplars // 2 slices of (e-2i, e]
    assert [exemplars_per_window(n) for n in (0, 1, 2, 3, 4, 5, 10, 11, 100, 101, 1000)] == [
        0, 1, 2, 2, 2, 2, 6, 6, 50, 50, 50]


def test_a_tenants_own_max_duration(
    tmp_path: Path, tempo: FakeTempo, prom: PrometheusServer, capsys: pytest.CaptureFixture[str]
) -> None:
    tempo.overrides["team-a"] = (200, overrides_page("max_metrics_duration_12h", "team-a"))
    config = write_config(
        tmp_path, tempo.url, prom.write_url,
        tenant="team-a|team-b",
    )
    code, lines = doctor(capsys, config)
    assert code == 1
    assert lines[9:11] == [
        "WARN Tempo's per-tenant override read.max_metrics_duration of tenant team-a is 12h, "
        "shorter than the bridge's tempo.max_duration 24h: Tempo refuses the longer catch-up "
        "queries of this tenant's groups; set tempo.max_duration: 12h in the bridge's config, "
        "or raise the override in Tempo's",
        "OK   Tempo sets no read.max_metrics_duration for tenant team-b: "
        "query_frontend.metrics.max_duration applies",
    ]
    asked = [path for path, _ in tempo.requests if path.startswith("/status/overrides/")]
    assert asked == ["/status/overrides/team-a", "/status/overrides/team-b"]
    # mirrored in the bridge's config: fine
    config = write_config(
        tmp_path, tempo.url, prom.write_url, tempo={"tenant": "team-a", "max_duration": "12h"})
    code, lines = doctor(capsys, config)
    assert lines[9] == (
        "OK   Tempo's per-tenant override read.max_metrics_duration of tenant team-a is 12h, "
        "at least tempo.max_duration (12h)"
    )


def test_a_tenants_max_duration_shorter_than_two_intervals(
    tmp_path: Path, tempo: FakeTempo, prom: PrometheusServer, capsys: pytest.CaptureFixture[str]
) -> None:
    tempo.overrides["team-a"] = (200, overrides_page("max_metrics_duration_12h", "team-a"))
    config = write_config(
        tmp_path, tempo.url, prom.write_url, tempo={"max_duration": "12h"},
        interval="8h", tenant="team-a",
    )
    code, lines = doctor(capsys, config)
    assert code == 1
    assert f"FAIL {group_at(config)}: Tempo's read.max_metrics_duration of tenant team-a 12h " \
        "is less than two intervals (16h), so missed windows can never be caught up; raise " \
        "it in Tempo's overrides to at least 16h" in lines


def test_overrides_not_served(
    tmp_path: Path, tempo: FakeTempo, prom: PrometheusServer, capsys: pytest.CaptureFixture[str]
) -> None:
    tempo.overrides["single-tenant"] = (404, b"404 page not found\n")
    config = write_config(tmp_path, tempo.url, prom.write_url)
    code, lines = doctor(capsys, config)
    assert code == 1
    assert lines[9] == (
        "WARN cannot read Tempo's overrides of tenant single-tenant (GET "
        "/status/overrides/single-tenant: Tempo answered 404: 404 page not found): its "
        "read.max_metrics_duration is not checked"
    )
# -- Tempo's clock ------------------------------------------------------------------------------


BOUNDS = r"(?P<low>\d+\.\d)s to (?P<high>\d+\.\d)s"


@pytest.mark.parametrize(
    ("ahead", "before"),
    [
        (-20.0, "WARN Tempo's clock is {bounds} behind this host's, at least "
                "(?P<certain>\\d+\\.\\d)s of {margin}; synchronise both clocks with NTP"),
        (100.0, "FAIL Tempo's clock is {bounds} ahead of this host's, more than {margin}: its "
                "windows are read before Tempo has all their spans; synchronise both clocks "
                "with NTP, or raise query_offset to at least 2m(?P<raise>\\d+)s"),
    ],
)
def test_tempo_s_clock_apart_from_the_host_s(
    tmp_path: Path, tempo: FakeTempo, prom: PrometheusServer, capsys: pytest.CaptureFixture[str],
    ahead: float, before: str,
) -> None:
    tempo.clock_ahead = ahead
    config = write_config(tmp_path, tempo.url, prom.write_url)
    code, lines = doctor(capsys, config)
    assert code == 1
    margin = re.escape("the smallest margin query_offset - query_end_cutoff - ingest_delay "
                       f"(1m15s, {group_at(config)})")
    pattern = re.escape(before).replace(re.escape("{bounds}"), BOUNDS).replace(
        re.escape("{margin}"), margin)
    pattern = pattern.replace(re.escape("(?P<certain>\\d+\\.\\d)"), r"(?P<certain>\d+\.\d)")
    pattern = pattern.replace(re.escape("(?P<raise>\\d+)"), r"(?P<raise>\d+)")
    (clock,) = [line for line in lines if "Tempo's clock" in line]
    match = re.fullmatch(pattern, clock)
    assert match, (pattern, clock)
    low, high = float(match["low"]), float(match["high"])
    # the Date header's second plus the round trip, around the skew
    assert low - 0.05 <= abs(ahead) <= high + 0.05
    assert high - low < 1.5
    if match.groupdict().get("certain"):
        assert match["certain"] == match["low"]
    if match.groupdict().get("raise"):
        assert 120 + int(match["raise"]) in (math.ceil(45 + high), math.ceil(45 + high) + 1)


def test_clock_skew_check_without_groups_or_date() -> None:
    config = Config.model_validate({"rule_files": []})
    assert check_clock_skew(None, config, []) == [Finding(
        "WARN", "Tempo's answers have no Date header: its clock is not compared with this host's"
    )]
    skew = ClockSkew(low=-0.4, high=0.7, at=0.0)
    assert check_clock_skew(skew, config, [])[0].level == "OK"
    apart = check_clock_skew(ClockSkew(low=5.2, high=6.1, at=0.0), config, [])
    assert apart == [Finding(
        "WARN", "Tempo's clock is 5.2s to 6.1s ahead of this host's; synchronise both with NTP"
    )]


# -- reaching Tempo -----------------------------------------------------------------------------


def test_unreachable_tempo(
    tmp_path: Path, prom: PrometheusServer, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    config = write_config(tmp_path, url, prom.write_url)
    code, lines = doctor(capsys, config)
    assert code == 1
    assert lines == [
        f"FAIL cannot reach Tempo at {url}: GET /api/status/buildinfo: cannot reach Tempo "
        "(ConnectError('All connection attempts failed')); check tempo.url",
        *receiver_ok(prom, AGE_OK),
        "1 problem found",
    ]


def test_query_refused_and_no_secret_printed(
    tmp_path: Path, tempo: FakeTempo, prom: PrometheusServer, capsys: pytest.CaptureFixture[str]
) -> None:
    # A careless proxy that echoes the Authorization header in its error.
    tempo.query = (401, f"bad credentials: Bearer {TOKEN}\n".encode())
    (tmp_path / "tempo-token").write_text(TOKEN + "\n")
    (tmp_path / "rw-token").write_text(TOKEN + "\n")
    config = write_config(
        tmp_path, tempo.url, prom.write_url,
        tempo={"bearer_token_file": "tempo-token"},
        remote_write={"bearer_token_file": "rw-token"}, tenant="team-a",
    )
    code, lines = doctor(capsys, config)
    assert code == 1
    assert lines[1] == (
        "FAIL Tempo refused a TraceQL metrics query for tenant team-a: query '{ } | "
        "count_over_time()': Tempo answered 401: bad credentials: <redacted>; check "
        "tempo.bearer_token_file, basic_auth or headers"
    )
    assert TOKEN not in "\n".join(lines)
    query = [headers for path, headers in tempo.requests if path == "/api/metrics/query"]
    assert query[0]["X-Scope-OrgID"] == "team-a"
    assert query[0]["Authorization"] == f"Bearer {TOKEN}"


# -- the receiver -------------------------------------------------------------------------------


def test_prometheus_without_the_receiver(
    tmp_path: Path, tempo: FakeTempo, prom_without_receiver: PrometheusServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(tmp_path, tempo.url, prom_without_receiver.write_url)
    code, lines = doctor(capsys, config)
    assert code == 1
    assert lines[-2:] == [
        f"FAIL the receiver at {prom_without_receiver.write_url} does not take remote write "
        "(HTTP 404): start Prometheus with --web.enable-remote-write-receiver, or fix "
        "remote_write.url",
        "1 problem found",
    ]


def test_unreachable_receiver(
    tmp_path: Path, tempo: FakeTempo, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}/api/v1/write"
    config = write_config(tmp_path, tempo.url, url)
    code, lines = doctor(capsys, config)
    assert code == 1
    assert lines[-2:] == [
        f"FAIL cannot reach the receiver: POST {url}: ConnectError: All connection attempts "
        "failed; check remote_write.url",
        "1 problem found",
    ]


def test_no_sample_age_limit_against_prometheus_without_out_of_order_window(
    tmp_path: Path, tempo: FakeTempo, prom: PrometheusServer, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(
        tmp_path, tempo.url, prom.write_url, remote_write={"max_sample_age": "0s"}
    )
    code, lines = doctor(capsys, config)
    assert code == 1
    assert lines[-2:] == [
        "WARN remote_write.max_sample_age is 0 (no limit) but Prometheus 2.42.0+ds has no "
        "out-of-order window: after an outage it refuses samples older than about 1h, and the "
        "whole request with them; set remote_write.max_sample_age: 50m, or give Prometheus "
        "storage.tsdb.out_of_order_time_window",
        "1 problem found",
    ]


def test_sample_age_above_what_prometheus_takes(
    tmp_path: Path, tempo: FakeTempo, prom: PrometheusServer, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(
        tmp_path, tempo.url, prom.write_url, remote_write={"max_sample_age": "1h"}
    )
    code, lines = doctor(capsys, config)
    assert code == 1
    assert lines[-2] == (
        "WARN remote_write.max_sample_age is 1h but Prometheus 2.42.0+ds refuses samples about "
        "1h old, and the whole request with them; set remote_write.max_sample_age: 50m or less"
    )


def test_sample_age_against_an_out_of_order_window(
    tmp_path: Path, tempo: FakeTempo, prom_out_of_order: PrometheusServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = prom_out_of_order.write_url
    for age, expected in [
        ("0s", "OK   remote_write.max_sample_age 0 (no limit) suits Prometheus 2.42.0+ds "
               "(out-of-order window 2h)"),
        ("90m", "OK   remote_write.max_sample_age 1h30m suits Prometheus 2.42.0+ds "
                "(out-of-order window 2h)"),
        ("3h", "WARN remote_write.max_sample_age is 3h but Prometheus 2.42.0+ds refuses "
               "samples more than 2h old, and the whole request with them; set "
               "remote_write.max_sample_age: 2h or less"),
    ]:
        config = write_config(
            tmp_path, tempo.url, url, remote_write={"max_sample_age": age}
        )
        code, lines = doctor(capsys, config)
        assert lines[-2] == expected
        assert code == (1 if expected.startswith("WARN") else 0)


def test_a_receiver_that_is_not_prometheus_is_not_judged(
    tmp_path: Path, tempo: FakeTempo, capsys: pytest.CaptureFixture[str]
) -> None:
    # Mimir's write path, with a key in the query string that must not be printed
    write_url = f"{tempo.url}/api/v1/push?api_key={TOKEN}"
    config = write_config(
        tmp_path, tempo.url, write_url, remote_write={"max_sample_age": "0s"}
    )
    code, lines = doctor(capsys, config)
    assert lines[-3:] == [
        f"OK   the receiver at {tempo.url}/api/v1/push?... accepts remote write",
        "OK   the receiver is not a Prometheus that shows its config; "
        "remote_write.max_sample_age 0 (no limit) not checked against it",
        "no problems found",
    ]
    assert code == 0


# -- parsing ------------------------------------------------------------------------------------


def test_go_durations() -> None:
    assert parse_go_duration("2h0m0s") == 7200
    assert parse_go_duration("1m30s") == 90
    assert parse_go_duration("1.5s") == 1.5
    assert parse_go_duration("500ms") == 0.5
    assert parse_go_duration("0s") == parse_go_duration("0") == 0
    with pytest.raises(ValueError, match="not a Go duration"):
        parse_go_duration("2 hours")


def test_tempo_settings_of_the_capture() -> None:
    settings = read_tempo_settings(STATUS_CONFIG)
    assert settings.slack == 7200
    assert settings.slack_key == "live_store.wal.ingestion_time_range_slack"
    assert settings.query_end_cutoff == 30
    assert settings.max_duration == 86400
    assert settings.max_intervals == 10000
    assert settings.max_response_series is None  # 0 in Tempo 3.0.3, left out of the dump
    assert settings.max_exemplars == 100
    with pytest.raises(ValueError, match="not a YAML mapping"):
        read_tempo_settings("- a list")


def test_prometheus_config_as_2_42_shows_it() -> None:
    # /api/v1/status/config data.yaml of Prometheus 2.42, without and with a window
    plain = "global:\n  scrape_interval: 1m\n  scrape_timeout: 10s\n  evaluation_interval: 1m\n"
    window = plain + (
        "storage:\n  tsdb:\n    outofordertimewindow: 1800000\n    out_of_order_time_window: 30m\n"
    )
    assert read_prometheus_config(plain) == 0
    assert read_prometheus_config(window) == 1800
    assert read_prometheus_config(json.dumps({"not": "prometheus"})) is None


def test_tenant_overrides_pages() -> None:
    def page(name: str) -> object:
        return json.loads(overrides_page(name, "team-a"))

    assert read_tenant_max_duration(page("defaults")) == 0
    assert read_tenant_max_duration(page("max_metrics_duration_12h")) == 12 * 3600
    for text, seconds in [("1d", 86400), ("36h0m0s", 129600), ("0s", 0)]:
        overrides = {"runtime_overrides": f"read:\n  max_metrics_duration: {text}\n"}
        assert read_tenant_max_duration(overrides) == seconds
    with pytest.raises(ValueError, match="no runtime_overrides"):
        read_tenant_max_duration({"tenant": "team-a"})
    with pytest.raises(ValueError, match="not a Go duration"):
        read_tenant_max_duration({"runtime_overrides": "read: {max_metrics_duration: soon}"})


# -- the state ------------------------------------------------------------------------------


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def state_with(path: Path, samples: list[Sample], *, removed: bool = False) -> None:
    """A state at ``path`` that recorded one window of one rule, ``samples`` waiting to
    be sent, closed as a stopped bridge leaves it."""
    state = State(path, exclusive=True)
    labels: Labels = (("__name__", "x_total"),)
    state.commit(RULE_KEY, Update(60, totals={(): Total(1.0, 60)}, live=frozenset({labels}),
                                  settle_checkpoints={}, samples=samples),
                 encode_batches(samples, {}, {}, 2000))
    if removed:
        state.mark_removed(RULE_KEY, 120.0)
    state.close()


RULE_KEY = RuleKey("costs", "x_total", "{ } | count_over_time()", "counter")


def test_a_stopped_bridge_s_state_is_read_and_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / STATE_FILE
    state_with(path, [])
    before = files(tmp_path)
    assert check_state(path, 3000) == [Finding(
        "OK", f"the state {path} is readable: 1 rule, no sample waiting to be sent")]
    assert files(tmp_path) == before  # no byte written, no -wal or -shm made


def test_samples_waiting_in_the_outbox_are_told_and_too_old_ones_warned_of(
    tmp_path: Path,
) -> None:
    path = tmp_path / STATE_FILE
    labels: Labels = (("__name__", "x_total"),)
    state_with(path, [(labels, 60_000, 1.0), (labels, 120_000, 2.0)], removed=True)
    held = f"the state {path} is readable: 1 rule (1 removed from the rule files, kept " \
           "for the retention), 2 samples waiting to be sent"
    assert check_state(path, 3000, now=90) == [Finding(
        "OK", f"{held}, the oldest 30s old: the daemon sends them when it starts")]
    assert check_state(path, 3000, now=60 + 3600) == [Finding(
        "WARN", f"{held}, the oldest 1h old: the daemon drops those older than "
        "remote_write.max_sample_age (50m) when it sends them (counters stay exact, gauges "
        "lose those windows); start it soon")]
    assert check_state(path, 0, now=60 + 3600)[0].level == "OK"  # no age limit


def test_a_state_open_by_a_bridge_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / STATE_FILE
    state = State(path, exclusive=True)
    try:
        assert check_state(path, 3000) == [Finding(
            "OK", f"the state {path} is open by tempo-bridge pid {os.getpid()}: not read "
            "here (the bridge's /api/v1/status tells what it holds)")]
    finally:
        state.close()
    assert check_state(path, 3000)[0].message.startswith(f"the state {path} is readable")


def test_a_state_left_with_a_write_ahead_log_is_not_read(tmp_path: Path) -> None:
    # open without the lock (as a bridge that died leaves it: its log, no holder)
    path = tmp_path / STATE_FILE
    state = State(path)
    try:
        assert check_state(path, 3000) == [Finding(
            "OK", f"the state {path} has a write-ahead log: a tempo-bridge has it open, or "
            "stopped without closing it (the daemon replays the log when it starts); not "
            "read here")]
    finally:
        state.close()


def test_a_damaged_state_fails(tmp_path: Path) -> None:
    path = tmp_path / STATE_FILE
    state_with(path, [])
    with sqlite3.connect(path) as db:
        db.execute("UPDATE totals SET ids = ?", (struct.pack("=q", 999),))
    db.close()
    assert check_state(path, 3000) == [Finding(
        "FAIL", f"the state database {path} is damaged: the rule costs/x_total's totals name "
        "the series id 999, which it does not hold; restore the whole file from a backup")]
    path.write_bytes(b"not a database")
    (finding,) = check_state(path, 3000)
    assert finding.level == "FAIL"
    assert finding.message.startswith(f"cannot open the state database {path}: ")


def test_a_bridge_opening_the_state_while_it_is_read_is_not_taken_for_damage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / STATE_FILE
    state_with(path, [])
    opened: list[State] = []

    class Started(State):
        """What doctor reads when a bridge starts meanwhile and changes the file: what
        it read no longer holds together."""

        def load(self, key: RuleKey) -> None:
            opened.append(State(path, exclusive=True))
            raise StateError(f"the state database {path} is damaged: as read mid-write")

    monkeypatch.setattr("bridge.doctor.State", Started)
    try:
        assert check_state(path, 3000) == [Finding(
            "OK", f"the state {path} is open by tempo-bridge pid {os.getpid()}: not read "
            "here (the bridge's /api/v1/status tells what it holds)")]
    finally:
        opened[0].close()


@pytest.mark.parametrize(("version", "expected"), [
    (0, "OK   the state {path} has schema version 0 (tempo-bridge 0.1): the daemon upgrades "
        "it when it starts"),
    (99, "FAIL the state {path} has schema version 99, newer than this tempo-bridge's (2): "
         "run the tempo-bridge that wrote it"),
])
def test_the_schema_version_is_told(tmp_path: Path, version: int, expected: str) -> None:
    path = tmp_path / STATE_FILE
    state_with(path, [])
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {version}")
    db.close()
    assert [str(f) for f in check_state(path, 3000)] == [expected.format(path=path)]


def test_doctor_reads_the_config_s_state(
    tmp_path: Path, tempo: FakeTempo, prom: PrometheusServer, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, tempo.url, prom.write_url)
    state_with(tmp_path / "data" / STATE_FILE, [])
    code, lines = doctor_all(capsys, config)
    assert lines[-2:] == [
        f"OK   the state {tmp_path / 'data' / STATE_FILE} is readable: 1 rule, no sample "
        "waiting to be sent",
        "no problems found",
    ]
    assert code == 0
