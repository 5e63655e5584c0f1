"""``tempo-bridge doctor``: exact report lines and exit codes.

Tempo is a small HTTP server answering with the real Tempo 3.0.3 captures
(``/api/status/buildinfo``, ``/status/config`` and an instant query), or with copies of
``/status/config`` changed one setting at a time. The receiver is a real Prometheus 2.42,
with and without ``--web.enable-remote-write-receiver`` and with an out-of-order window.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bridge.cli import main
from bridge.doctor import parse_go_duration, read_prometheus_config, read_tempo_settings
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

SLACK_2H = "        ingestion_time_range_slack: 2h0m0s\n"
CUTOFF_30S = "    query_end_cutoff: 30s\n"
MAX_DURATION_24H = "        max_duration: 24h0m0s\n"


def tempo_config(old: str, new: str) -> str:
    """The captured /status/config with one line changed."""
    assert STATUS_CONFIG.count(old) == 1, old
    return STATUS_CONFIG.replace(old, new)


class FakeTempo:
    """Answers the paths doctor asks for with captured bodies; records each request."""

    def __init__(self) -> None:
        self.status_config: tuple[int, bytes] = (200, STATUS_CONFIG.encode())
        self.query: tuple[int, bytes] = (INSTANT.status, INSTANT.body)
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
    directory: Path, tempo_url: str, write_url: str, *, tempo: Mapping[str, str] = {},
    remote_write: Mapping[str, str] = {}, tenant: str | None = None,
) -> Path:
    """One group ``costs`` (1m windows, query offset 2m) and a config with Tempo's default
    cutoff and ingest delay, changed by ``tempo`` and ``remote_write``."""
    write_rules(directory / "rules.yaml", Rule("requests_total", "{ } | count_over_time()"),
                group="costs", interval="1m", query_offset="2m", settle=None, tenant=tenant)
    return write_bridge_config(
        directory, tempo_url, write_url,
        tempo={"query_end_cutoff": None, "ingest_delay": None, **tempo},
        remote_write=remote_write, state_dir=None, web=None,
    )


def doctor(
    capsys: pytest.CaptureFixture[str], config: Path, *args: str
) -> tuple[int, list[str]]:
    code = main(["doctor", "--config", str(config), *args])
    out = capsys.readouterr().out
    return code, out.splitlines()


def group_at(config: Path) -> str:
    return f"group costs ({config.parent / 'rules.yaml'}:2)"


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
        *receiver_ok(prom, AGE_OK),
        "no problems found",
    ]
    assert code == 0
    asked = [path for path, _ in tempo.requests]
    assert asked == ["/api/status/buildinfo", "/api/metrics/query", "/status/config"]


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
        *receiver_ok(prom, AGE_OK),
        "1 problem found",
    ]


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
