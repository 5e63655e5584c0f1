"""Fixtures every test module may use: structlog's defaults back after each test, and a real
Prometheus per module. The helpers behind them live in ``tests/support``."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import structlog

from bridge.logs import _LibraryHandler
from bridge.worker import Worker
from tests.support.prometheus import PrometheusServer, start_prometheus


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """``main`` and some tests configure structlog, and the root logger's handler, for a
    stream that pytest closes after the test; give the next test the defaults back."""
    yield
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _LibraryHandler)]:
        root.removeHandler(handler)


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """A real Prometheus with its remote-write receiver, shared by one module's tests and
    stopped after them."""
    with start_prometheus(tmp_path_factory.mktemp("prometheus")) as server:
        yield server


@pytest.fixture
def worker() -> Iterator[Worker]:
    """A worker thread, as the daemon has; closed after the test."""
    worker = Worker()
    yield worker
    worker.close()


@pytest.fixture
def state_worker() -> Iterator[Worker]:
    """The thread the daemon makes its state calls on; closed after the test."""
    worker = Worker("state")
    yield worker
    worker.close()
