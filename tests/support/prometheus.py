"""A real Prometheus for tests: started with its remote-write receiver, queried over HTTP.

Uses ``/usr/bin/prometheus`` (Debian's package, installed by CI) or
``$PROMETHEUS_BIN``. A missing binary is an error, not a skip: tests marked
``prometheus`` must not pass silently on a machine that cannot run them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.support.servers import free_port

DEFAULT_BINARY = "/usr/bin/prometheus"
READY_TIMEOUT = 30.0
_CONFIG = """\
# Written by tests/support/prometheus.py: the receiver, and scrape targets if asked.
global:
  scrape_interval: 1m
  evaluation_interval: 1m
"""


_SCRAPE = """\
scrape_configs:
  - job_name: tempo-bridge
    scrape_interval: 1s
    scrape_timeout: 1s
    file_sd_configs:
      - files: [{file}]
        refresh_interval: 1s
"""


class PrometheusError(RuntimeError):
    """Prometheus could not be started or answered a query with an error."""


def find_binary(env_var: str, default: str, error: type[RuntimeError]) -> str:
    """The path of a Prometheus tool: ``$env_var`` or ``default``; raises ``error`` if there
    is none (CI installs Debian's prometheus: a missing tool fails loudly, never skips)."""
    wanted = os.environ.get(env_var, default)
    found = shutil.which(wanted)
    if found is None:
        raise error(
            f"{Path(default).name} binary {wanted!r} not found or not executable: install it "
            f"(apt-get install prometheus) or set {env_var} to its path"
        )
    return found


def prometheus_binary() -> str:
    """The path of the prometheus binary to run; raises if there is none."""
    return find_binary("PROMETHEUS_BIN", DEFAULT_BINARY, PrometheusError)


class PrometheusServer:
    """One Prometheus process with its own TSDB directory, listening on 127.0.0.1.

    ``storage_dir`` is the TSDB directory (default ``tmp_dir/data``): give one that holds
    blocks, such as those of ``promtool tsdb create-blocks-from``, to query them.
    ``remote_write_receiver=False`` starts it without ``--web.enable-remote-write-receiver``;
    ``out_of_order_time_window`` (``"2h"``) sets ``storage.tsdb.out_of_order_time_window``.
    ``exemplar_storage=True`` starts it with ``--enable-feature=exemplar-storage`` (without
    it Prometheus takes remote-written exemplars and drops them silently);
    :meth:`query_exemplars` reads them back.
    ``scrape_targets_file`` makes it scrape, as the job ``tempo-bridge`` every second, the
    targets listed in that file (Prometheus's file service discovery, JSON:
    ``[{"targets": ["127.0.0.1:9478"]}]``); write the file when the targets are known, even
    after the start (Prometheus watches it, and applies a change within about 5 s).
    """

    def __init__(
        self, tmp_dir: Path, *, binary: str | None = None, storage_dir: Path | None = None,
        remote_write_receiver: bool = True, out_of_order_time_window: str | None = None,
        scrape_targets_file: Path | None = None, exemplar_storage: bool = False,
    ) -> None:
        self._binary = binary or prometheus_binary()
        self._dir = tmp_dir
        self._dir.mkdir(parents=True, exist_ok=True)
        self._storage = storage_dir or self._dir / "data"
        self._config = self._dir / "prometheus.yml"
        self._config.write_text(_CONFIG + (
            f"storage:\n  tsdb:\n    out_of_order_time_window: {out_of_order_time_window}\n"
            if out_of_order_time_window else ""
        ) + (_SCRAPE.format(file=json.dumps(str(scrape_targets_file)))
             if scrape_targets_file else ""))
        self._remote_write_receiver = remote_write_receiver
        self._exemplar_storage = exemplar_storage
        self._log = self._dir / "prometheus.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._http = httpx.Client(timeout=10.0)
        self.url = ""
        self.write_url = ""

    def start(self) -> None:
        """Start the process and wait until ``/-/ready`` answers 200."""
        # The free port can be taken between our probe and Prometheus's bind:
        # then Prometheus exits at once and we try another port.
        for _ in range(3):
            port = free_port()
            self.url = f"http://127.0.0.1:{port}"
            self.write_url = f"{self.url}/api/v1/write"
            if self._start_on(port):
                return
        raise PrometheusError(f"prometheus could not bind a port:\n{self._log_tail()}")

    def _start_on(self, port: int) -> bool:
        with self._log.open("wb") as log:
            self._process = subprocess.Popen(
                [
                    self._binary,
                    f"--config.file={self._config}",
                    f"--storage.tsdb.path={self._storage}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    *(["--web.enable-remote-write-receiver"] if self._remote_write_receiver
                      else []),
                    *(["--enable-feature=exemplar-storage"] if self._exemplar_storage else []),
                    "--log.level=info",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                if "address already in use" in self._log_tail():
                    return False
                raise PrometheusError(
                    f"prometheus exited with status {code} before it was ready:\n"
                    f"{self._log_tail()}"
                )
            with contextlib.suppress(httpx.TransportError):
                if self._http.get(f"{self.url}/-/ready").status_code == 200:
                    return True
            time.sleep(0.05)
        self.stop()
        raise PrometheusError(
            f"prometheus not ready after {READY_TIMEOUT:.0f} s:\n{self._log_tail()}"
        )

    @property
    def pid(self) -> int:
        """The process id of the running Prometheus (for its CPU time in /proc)."""
        if self._process is None:
            raise PrometheusError("prometheus is not running")
        return self._process.pid

    def _log_tail(self, lines: int = 40) -> str:
        try:
            text = self._log.read_text(errors="replace")
        except FileNotFoundError:
            return "(no output)"
        return "\n".join(text.splitlines()[-lines:])

    def _api(self, path: str, params: dict[str, str], timeout: float | None = None) -> Any:
        response = self._http.get(f"{self.url}{path}", params=params,
                                  timeout=timeout or self._http.timeout)
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if not isinstance(payload, dict) or payload.get("status") != "success":
            raise PrometheusError(
                f"GET {path} {params}: HTTP {response.status_code}: {response.text}"
            )
        return payload["data"]

    def query(
        self, promql: str, time: float | None = None, timeout: float | None = None,
    ) -> list[dict[str, Any]]:
        """Instant query: the result vector, ``[{"metric": {...}, "value": [ts, "v"]}]``
        (``timeout``: seconds, for a query over a million series; 10 by default)."""
        params = {"query": promql}
        if time is not None:
            params["time"] = repr(time)
        data = self._api("/api/v1/query", params, timeout)
        if data["resultType"] not in ("vector", "matrix"):
            raise PrometheusError(f"{promql!r} gives a {data['resultType']}, not a vector")
        result: list[dict[str, Any]] = data["result"]
        return result

    def query_range(
        self, promql: str, start: float, end: float, step: float
    ) -> list[dict[str, Any]]:
        """Range query: the result matrix, ``[{"metric": {...}, "values": [[ts, "v"], ...]}]``."""
        data = self._api(
            "/api/v1/query_range",
            {"query": promql, "start": repr(start), "end": repr(end), "step": repr(step)},
        )
        result: list[dict[str, Any]] = data["result"]
        return result

    def series(
        self, match: str, start: float | None = None, end: float | None = None
    ) -> list[dict[str, Any]]:
        """Label sets of the series matching ``match`` (default: Prometheus's whole range)."""
        params = {"match[]": match}
        if start is not None:
            params["start"] = repr(start)
        if end is not None:
            params["end"] = repr(end)
        result: list[dict[str, Any]] = self._api("/api/v1/series", params)
        return result

    def query_exemplars(self, promql: str, start: float, end: float) -> list[dict[str, Any]]:
        """``/api/v1/query_exemplars``: per series of ``promql``, the exemplars stored between
        ``start`` and ``end``, ``[{"seriesLabels": {...}, "exemplars": [{"labels": {...},
        "value": "0.25", "timestamp": 1795780810.123}, ...]}]``."""
        result: list[dict[str, Any]] = self._api(
            "/api/v1/query_exemplars",
            {"query": promql, "start": repr(start), "end": repr(end)},
        )
        return result

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 10 s); idempotent."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._http.close()


@contextlib.contextmanager
def start_prometheus(
    tmp_dir: Path, *, storage_dir: Path | None = None, remote_write_receiver: bool = True,
    out_of_order_time_window: str | None = None, scrape_targets_file: Path | None = None,
    exemplar_storage: bool = False,
) -> Iterator[PrometheusServer]:
    """A running Prometheus for the duration of the ``with`` block.

    For a pytest fixture: ``with start_prometheus(tmp_path_factory.mktemp("prom")) as p:
    yield p``. The keyword arguments: see :class:`PrometheusServer`.
    """
    server = PrometheusServer(
        tmp_dir, storage_dir=storage_dir, remote_write_receiver=remote_write_receiver,
        out_of_order_time_window=out_of_order_time_window,
        scrape_targets_file=scrape_targets_file, exemplar_storage=exemplar_storage,
    )
    try:
        server.start()
        yield server
    finally:
        server.stop()
