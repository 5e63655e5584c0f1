"""Shared test set-up: every test starts with structlog's defaults."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """``main`` and some tests configure structlog for a stream that pytest closes after
    the test; give the next test the defaults back."""
    yield
    structlog.reset_defaults()
