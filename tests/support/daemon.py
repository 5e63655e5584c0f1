"""The daemon in-process for tests: built from a config file, run for an ``async with``
block, stopped and awaited when the block ends, whether the test passed or not."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from bridge.components import load_rules
from bridge.config import load_config
from bridge.daemon import Daemon
from tests.support.servers import eventually


def make_daemon(
    config_path: Path, environ: Mapping[str, str] = os.environ, **options: Any
) -> Daemon:
    """A daemon for the config file, its rules loaded; ``options`` go to :class:`Daemon`."""
    config = load_config(config_path, environ)
    return Daemon(config_path, config, load_rules(config), **options)


@asynccontextmanager
async def running(daemon: Daemon) -> AsyncIterator[Daemon]:
    """``daemon.run()`` for the ``async with`` block, entered once its web server listens
    (an error of the start is raised here); then stopped, and its run awaited."""
    task = asyncio.create_task(daemon.run())
    try:
        await eventually(lambda: daemon.web.port or task.done(), "the daemon's web server")
        if task.done():
            task.result()
        yield daemon
    finally:
        daemon.stop()
        await task
