"""Memory: the cyclic garbage collector paused while big answers become objects.

Parsing an answer of 100,000 series, evaluating it and encoding its samples allocate
millions of small objects, none of them in a reference cycle: they are freed by their
reference counts. Each run of the cyclic collector would walk them all, and every
long-lived total with them, for nothing; paused, it runs once afterwards.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for the ``with`` block (nested blocks are fine)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
