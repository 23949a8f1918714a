"""The daemon gives freed memory back to the system (controller/service/memory.py)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
import threading

import pytest

from controller.service.memory import Glibc, Trimmer

pytestmark = pytest.mark.skipif(Glibc.here() is None, reason="glibc only: musl has no malloc_trim")

# 48 MiB of 4 KiB blocks from malloc's heap (under its mmap threshold), freed below one block kept
# above them: the heap's top cannot shrink, so plain free() gives nothing back; a trim must.
FREED_BELOW_A_KEPT_BLOCK = """
import os, sys
from controller.service.memory import Glibc

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

libc = Glibc.here()
start = rss_mib()
blocks = [bytearray(4096) for _ in range(12288)]
kept = bytearray(4096)
del blocks
freed = rss_mib()
trimmed = libc.trim()
print(start, freed, rss_mib(), trimmed, libc.limit_arenas(2))
"""


def test_a_trim_gives_back_what_free_kept() -> None:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(FREED_BELOW_A_KEPT_BLOCK)], capture_output=True,
                         text=True, timeout=30, check=True).stdout.split()
    start, freed, after = (float(x) for x in out[:3])
    assert freed - start > 30, f"free() alone already gave the memory back ({start:.1f} -> {freed:.1f} MiB)"
    assert out[3] == "True" and freed - after > 30, f"RSS {freed:.1f} MiB after free, {after:.1f} after the trim"
    assert out[4] == "True"  # glibc took M_ARENA_MAX


class Counting:
    def __init__(self, fail_at: int = 0) -> None:
        self.calls = 0
        self.threads: set[str] = set()
        self.fail_at = fail_at
        self.third = threading.Event()

    def trim(self) -> bool:
        self.calls += 1
        self.threads.add(threading.current_thread().name)
        if self.calls == self.fail_at:
            raise OSError("trim refused")
        if self.calls == 3:
            self.third.set()
        return True


async def test_the_trimmer_trims_every_interval_off_the_loop_and_stops() -> None:
    allocator = Counting()
    trimmer = Trimmer(allocator, every=0.01)
    trimmer.start()
    task = trimmer._task
    assert task is not None
    assert await asyncio.to_thread(allocator.third.wait, 5), "three trims within 5 s at 10 ms"
    await trimmer.stop()
    assert task.done(), "stopped: nothing left to start another trim"
    assert trimmer.trims >= allocator.calls - 1 >= 2 and threading.main_thread().name not in allocator.threads


async def test_a_failing_trim_is_one_log_line_and_the_end_of_trimming(caplog: pytest.LogCaptureFixture) -> None:
    allocator = Counting(fail_at=2)
    trimmer = Trimmer(allocator, every=0.01)
    caplog.set_level(logging.ERROR, "controller.service.memory")
    trimmer.start()
    assert trimmer._task is not None
    await asyncio.wait_for(asyncio.shield(trimmer._task), 5)  # it ends by itself
    assert allocator.calls == 2 and trimmer.trims == 1
    assert [r.getMessage() for r in caplog.records] == ["malloc_trim failed; no more trims this run"]
    await trimmer.stop()


async def test_without_glibc_the_trimmer_starts_nothing() -> None:
    trimmer = Trimmer(None)
    trimmer.start()
    assert trimmer._task is None and trimmer.trims == 0
    await trimmer.stop()
