"""Pausing Python's cyclic garbage collector around work that builds many live objects and no garbage."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic collector, restoring its state after.

    Passes and the image loader create hundreds of thousands of small objects
    (ops, values, uses: each op and its results refer to each other) and keep
    almost all of them; every so many allocations the collector would traverse
    all live objects again (a quarter of a compile's time at hidden 2048, a fifth
    of an image load). Nothing large waits for it: an erased op drops its
    attributes (the weights) at once, and reference counting frees them.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
