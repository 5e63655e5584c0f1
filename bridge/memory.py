"""Memory: the cyclic garbage collector paused while big answers become objects.

Parsing an answer of 100,000 series, evaluating it and encoding its samples allocate
millions of small objects, none of them in a reference cycle: they are freed by their
reference counts. Each run of the cyclic collector would walk them all, and every
long-lived total with them, for nothing; paused, it runs once afterwards, when the
temporaries are gone and only what is kept is left to walk.

Pauses nest and may overlap across asyncio tasks (an evaluation waits for Tempo with the
collector paused) and threads (the worker parses answers meanwhile: bridge.worker): it
runs again when the last pause ends, if it ran before the first.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

_pauses = 0
_was_enabled = False
_lock = threading.Lock()


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for the ``with`` block."""
    global _pauses, _was_enabled
    with _lock:
        if _pauses == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _lock:
            _pauses -= 1
            if _pauses == 0 and _was_enabled:
                gc.enable()
