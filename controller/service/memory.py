"""Memory a daemon that runs for months gives back to the system.

Python hands what it frees to the C allocator, and glibc's malloc keeps most of it: free pages in
the middle of a heap are returned only by ``malloc_trim``, and every thread that allocates may get
an arena of its own (up to eight per core on 64-bit), each keeping its own free memory. The one-hour soak
showed it: Python's allocated blocks and objects flat after the warm-up while RSS still rose in
steps (docs/benchmarks.md, "The hour"). So, on glibc only (musl and others are left alone):

- at most :data:`ARENAS` malloc arenas (``mallopt(M_ARENA_MAX)``, set before any thread starts:
  the same as ``MALLOC_ARENA_MAX=2`` in the environment, which glibc reads only at start);
- every :data:`TRIM_EVERY_S` seconds, ``malloc_trim(0)`` on a worker thread (it walks the heaps
  under their locks; the event loop goes on meanwhile, waiting only if it needs that arena).

Nothing here forces a garbage collection: a full one over a thousand connections is a pause of
tens of milliseconds that the replies would wait behind.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import platform
import time
from typing import Protocol

from controller.wire.owned import stop_task

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # mallopt parameter number, from glibc's malloc.h
ARENAS = 2
TRIM_EVERY_S = 60.0
SLOW_TRIM_S = 0.5  # a trim longer than this is logged (once a run): the heap is larger than expected


class Allocator(Protocol):
    def trim(self) -> bool:
        """Give free memory back to the system; True if some was."""


class Glibc:
    """glibc's malloc, through ctypes."""

    def __init__(self, libc: ctypes.CDLL) -> None:
        self._mallopt = libc.mallopt
        self._mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        self._mallopt.restype = ctypes.c_int
        self._malloc_trim = libc.malloc_trim
        self._malloc_trim.argtypes = [ctypes.c_size_t]
        self._malloc_trim.restype = ctypes.c_int

    @classmethod
    def here(cls) -> Glibc | None:
        """This process's glibc, or None on another C library."""
        if platform.libc_ver()[0] != "glibc":
            return None
        try:
            return cls(ctypes.CDLL("libc.so.6"))
        except (OSError, AttributeError):
            return None

    def limit_arenas(self, arenas: int) -> bool:
        """At most *arenas* malloc arenas for the threads started from now on; False if refused."""
        return self._mallopt(M_ARENA_MAX, arenas) == 1

    def trim(self) -> bool:
        return self._malloc_trim(0) == 1


class Trimmer:
    """Trims *allocator* every *every* seconds from a worker thread, until stopped (with no allocator,
    where the C library is not glibc, it does nothing)."""

    def __init__(self, allocator: Allocator | None, every: float = TRIM_EVERY_S) -> None:
        self.allocator = allocator
        self.every = every
        self.trims = 0  # trims done
        self.slowest_s = 0.0  # the longest one
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.allocator is not None:
            self._task = asyncio.get_running_loop().create_task(self._run(self.allocator), name="malloc-trim")

    async def _run(self, allocator: Allocator) -> None:
        while True:
            await asyncio.sleep(self.every)
            started = time.monotonic()
            try:
                await asyncio.to_thread(allocator.trim)
            except Exception:  # nothing a trim does is worth stopping the daemon for
                log.exception("malloc_trim failed; no more trims this run")
                return
            took = time.monotonic() - started
            self.trims += 1
            if took > SLOW_TRIM_S >= self.slowest_s:
                log.warning("giving freed memory back took %.1f s", took)
            self.slowest_s = max(self.slowest_s, took)

    async def stop(self) -> None:
        if self._task is not None:
            await stop_task(self._task, 2 * SLOW_TRIM_S)
            self._task = None


def settle_allocator() -> Trimmer:
    """Limit glibc's arenas (call before any thread starts) and return the trimmer to start on the
    loop (one that does nothing where the C library is not glibc)."""
    libc = Glibc.here()
    if libc is not None and not libc.limit_arenas(ARENAS):
        log.debug("glibc refused M_ARENA_MAX=%d", ARENAS)
    return Trimmer(libc)
