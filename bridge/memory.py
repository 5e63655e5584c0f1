"""Memory: the cyclic garbage collector paused while big answers become objects, and one
malloc arena for the process.

Parsing an answer of 100,000 series, evaluating it and encoding its samples allocate
millions of small objects, none of them in a reference cycle: they are freed by their
reference counts. Each run of the cyclic collector would walk them all, and every
long-lived total with them, for nothing; paused, it runs once afterwards, when the
temporaries are gone and only what is kept is left to walk.

Pauses nest and may overlap across asyncio tasks (an evaluation waits for Tempo with the
collector paused) and threads (the worker parses answers meanwhile: bridge.worker): it
runs again when the last pause ends, if it ran before the first.

glibc's malloc gives each thread that allocates an arena of its own: the worker's big
allocations (an answer's dictionaries, the requests) would stay in a second heap beside
the loop's, each keeping its own free memory (15 MB more at the peak of a 100,000-series
evaluation). Python's allocator and the GIL already keep threads from allocating at
once, so the process keeps to one arena (:func:`one_malloc_arena`).
"""

from __future__ import annotations

import contextlib
import ctypes
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


_M_ARENA_MAX = -8  # glibc's malloc.h


def one_malloc_arena() -> bool:
    """Have glibc's malloc serve every thread from one arena (``MALLOC_ARENA_MAX=1``);
    whether it did (False elsewhere than glibc). Call it before threads start."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_ARENA_MAX, 1))
