"""The real ``promtool`` for tests: blocks from OpenMetrics, rule checks and rule unit tests.

Uses ``/usr/bin/promtool`` (Debian's prometheus package, installed by CI) or
``$PROMTOOL_BIN``. A missing binary is an error, not a skip, as for
``tests/support/prometheus.py``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.prometheus import find_binary

DEFAULT_BINARY = "/usr/bin/promtool"


class PromtoolError(RuntimeError):
    """promtool is missing or exited with an error."""


def promtool_binary() -> str:
    """The path of the promtool binary to run; raises if there is none."""
    return find_binary("PROMTOOL_BIN", DEFAULT_BINARY, PromtoolError)


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
