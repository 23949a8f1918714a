"""``pictl`` with tracemalloc snapshots taken inside the daemon: what grows, named by traceback.

    .venv/bin/python bench/traced.py --out DIR [--every 60] [--frames 12] [--baseline 300] -- serve ...

Runs ``controller.service.cli.main`` (everything after ``--``) in this process with tracemalloc
started before pictl is imported. A thread of its own wakes every ``--every`` seconds, runs a full
collection (so what is only waiting for the cyclic collector is not counted) and takes a snapshot,
then writes ``DIR/growth-NNNN.txt``: the top allocation sites by size growth, grouped by traceback,
against the first snapshot taken after ``--baseline`` seconds (the soak's warm-up: stores that fill
for a while and then stay full are not growth) and against the previous snapshot. ``DIR/rss.tsv``
gets one line per snapshot: seconds since start, RSS KiB, traced KiB, and the allocator's view
(``sys._debugmallocstats`` is too noisy: the figure is tracemalloc's total against RSS, whose gap
is what the allocator holds but Python does not use: fragmentation and free lists).

Nothing here changes pictl: the soak (``bench/soak.py --tracemalloc DIR``) starts the daemon
through this file instead of the ``pictl`` script. Tracing costs CPU and memory of its own (about
2x slower allocations, tens of MiB): figures from a traced run are for naming growth, not for
the RSS goal.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import os
import sys
import threading
import time
import tracemalloc
from collections import Counter
from pathlib import Path

PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
FILTERS = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
           tracemalloc.Filter(False, "<unknown>"),
           tracemalloc.Filter(False, __file__, all_frames=True)]  # this thread's own (linecache, snapshots)


def rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE_KIB


def malloc_trim() -> None:
    """Give glibc's free heap pages back (PICTL_TRACE_TRIM=1): RSS that falls after it was
    fragmentation or free lists, not live objects."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def top(stats: list[tracemalloc.StatisticDiff], limit: int) -> str:
    lines = []
    for stat in stats[:limit]:
        lines.append(f"{stat.size_diff / 1024:+10.1f} KiB  {stat.count_diff:+8d} blocks  "
                     f"(now {stat.size / 1024:.1f} KiB in {stat.count} blocks)")
        for frame in stat.traceback.format(limit=12, most_recent_first=True):
            lines.append(f"      {frame.strip()}" if not frame.startswith("  ") else f"    {frame.rstrip()}")
    return "\n".join(lines)


def watch(out: Path, every: float, baseline_after: float, limit: int) -> None:
    started = time.monotonic()
    baseline: tracemalloc.Snapshot | None = None
    previous: tracemalloc.Snapshot | None = None
    trim = os.environ.get("PICTL_TRACE_TRIM") == "1"
    with (out / "rss.tsv").open("w") as tsv:
        tsv.write("seconds\trss_kib\ttraced_kib\trss_after_trim_kib\tallocated_blocks\tgc_objects\n")
    counted: Counter[str] | None = None  # objects by type at the baseline
    for n in range(1_000_000):
        time.sleep(every)
        gc.collect()
        tracing = tracemalloc.is_tracing()
        snapshot = tracemalloc.take_snapshot().filter_traces(FILTERS) if tracing else None
        traced = tracemalloc.get_traced_memory()[0] // 1024
        rss = rss_kib()
        if trim:
            malloc_trim()
        trimmed = rss_kib() if trim else ""  # before the object list below takes its own memory
        elapsed = time.monotonic() - started
        objects = gc.get_objects()
        with (out / "rss.tsv").open("a") as tsv:
            tsv.write(f"{elapsed:.0f}\t{rss}\t{traced if tracing else ''}\t{trimmed}\t"
                      f"{sys.getallocatedblocks()}\t{len(objects)}\n")
        if snapshot is None:  # no tracing: objects the collector tracks, counted by type
            now = Counter(type(o).__qualname__ for o in objects)
            del objects
            if counted is None and elapsed >= baseline_after:
                counted = now
            if counted is not None:
                grown = sorted(((c - counted.get(k, 0), k, c) for k, c in now.items()), reverse=True)[:limit]
                (out / f"types-{n:04d}.txt").write_text(f"# {elapsed:.0f} s: objects by type, growth since the "
                                                        f"baseline\n" + "".join(f"{d:+8d}  {k}  (now {c})\n"
                                                                                 for d, k, c in grown))
            continue
        del objects
        if baseline is None and elapsed >= baseline_after:
            baseline = snapshot
        parts = [f"# {elapsed:.0f} s: RSS {rss} KiB, traced {traced} KiB"]
        if baseline is not None and baseline is not snapshot:
            parts += [f"\n## growth since the baseline snapshot (after {baseline_after:.0f} s)\n",
                      top(snapshot.compare_to(baseline, "traceback"), limit)]
        if previous is not None:
            parts += ["\n## growth since the previous snapshot\n",
                      top(snapshot.compare_to(previous, "traceback"), limit)]
        (out / f"growth-{n:04d}.txt").write_text("\n".join(parts) + "\n")
        previous = snapshot


def main() -> int:
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--every", type=float, default=60.0, help="seconds between snapshots")
    ap.add_argument("--frames", type=int, default=12, help="traceback depth kept per allocation; 0: no tracing, "
                    "only RSS (and malloc_trim with PICTL_TRACE_TRIM=1)")
    ap.add_argument("--baseline", type=float, default=300.0, help="seconds before the baseline snapshot")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args(argv[:split])
    args.out.mkdir(parents=True, exist_ok=True)
    if args.frames:
        tracemalloc.start(args.frames)
    threading.Thread(target=watch, args=(args.out, args.every, args.baseline, args.top), daemon=True,
                     name="tracemalloc").start()
    from controller.service.cli import main as pictl

    return pictl(argv[split + 1:])


if __name__ == "__main__":
    sys.exit(main())
