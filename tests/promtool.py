"""The real ``promtool`` for tests: blocks from OpenMetrics, rule checks and rule unit tests.

Uses ``/usr/bin/promtool`` (Debian's prometheus package, installed by CI) or
``$PROMTOOL_BIN``. A missing binary is an error, not a skip, as for
``tests/prometheus_server.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

DEFAULT_BINARY = "/usr/bin/promtool"


class PromtoolError(RuntimeError):
    """promtool is missing or exited with an error."""


def promtool_binary() -> str:
    """The path of the promtool binary to run; raises if there is none."""
    wanted = os.environ.get("PROMTOOL_BIN", DEFAULT_BINARY)
    found = shutil.which(wanted)
    if found is None:
        raise PromtoolError(
            f"promtool binary {wanted!r} not found or not executable: install it "
            "(apt-get install prometheus) or set PROMTOOL_BIN to its path"
        )
    return found


def promtool(*args: str | Path, cwd: Path | None = None) -> str:
    """Run ``promtool ARGS``; its combined output, or PromtoolError when it fails."""
    result = subprocess.run(
        [promtool_binary(), *map(str, args)],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise PromtoolError(
            f"promtool {' '.join(map(str, args))} exited with {result.returncode}:\n{output}"
        )
    return output
