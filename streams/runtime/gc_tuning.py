"""Python's cycle collector and the C allocator tuned for a stream worker and its fold processes."""

import ctypes
import ctypes.util
import gc
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from parcours.runtime import collect_seldom

log = logging.getLogger(__name__)

# Seconds without a large batch after which a worker, and its fold processes, collect their
# garbage and give the free memory back: a backfill is over.
IDLE_S = 10.0

# glibc's `mallopt` parameter numbers of M_ARENA_MAX and M_MMAP_THRESHOLD.
M_ARENA_MAX = -8
M_MMAP_THRESHOLD = -3
# Blocks at least this large get pages of their own, given back when freed.
MMAP_THRESHOLD = 256 * 1024


def tune_gc() -> None:
    """Make Python's cycle collector, and glibc's allocator, fit a stream worker.

    A batch allocates hundreds of thousands of short-lived objects while the heap holds every
    patient's state: with the default thresholds the collector took two thirds of the time of
    the pathway rules. It runs less often (`collect_seldom`).

    glibc gives each thread that allocates its own arena, up to eight per core; the worker's
    threads (SQL writes, folds, Faust) each kept a heap of a batch's size. Two arenas are enough.
    glibc also raises the size from which a block gets pages of its own each time such a block is
    freed, up to 32 MB: a batch's buffers (pipes, JSON) would then land in the heap between the
    table's values, and stay there once freed. The size is fixed instead.
    """
    collect_seldom()
    libc = _libc()
    if libc is not None:
        libc.mallopt(M_ARENA_MAX, 2)
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cycle collector off while a fold process folds a batch, on again after.

    A batch's young objects include its largest containers (the messages, the decoded states,
    the outcome), which each young collection traverses again: with the collector on, a 30-day
    backfill spent about a sixth of its fold time in collections. Nearly everything a batch
    allocates dies by reference count; what is left in cycles is collected once the collector
    is on again."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def give_back_memory() -> None:
    """Return the free pages of the C heap to the system (glibc `malloc_trim`): after a large
    batch, or a backfill, the freed memory stays mapped otherwise."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


_LIBC: list[Any] = []


def _libc() -> Any:
    if not _LIBC:
        name = ctypes.util.find_library("c")
        try:
            lib = ctypes.CDLL(name) if name else None
            if lib is not None and not (hasattr(lib, "mallopt") and hasattr(lib, "malloc_trim")):
                lib = None  # not glibc
        except OSError:
            lib = None
        _LIBC.append(lib)
    return _LIBC[0]
