"""Event fan-out: one state change to N subscribers, time until the last one has it.

pictl (demo plant, child process) against a bare websockets server calling
``broadcast`` (child process), measured alternately in the same run. The
trigger is ``light.toggle``: its first event (the output changing) is
published as soon as the request is handled, so the figure is one request's
trip plus the fan-out to every subscriber, as seen by the subscribers.

    .venv/bin/python bench/fanout.py [--subscribers 10 100 1000] [--repeat 15]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rpc_latency import PICTL, start

ROOT = Path(__file__).resolve().parent.parent


async def subscribe(url: str, n: int, token: str | None) -> list:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    links = []
    for i in range(0, n, 50):  # open in waves: the listen backlog is finite
        batch = [connect(url, additional_headers=headers, compression=None, open_timeout=30)
                 for _ in range(min(50, n - i))]
        links.extend(await asyncio.gather(*batch))
    if token:
        frame = json.dumps({"jsonrpc": "2.0", "id": 0, "method": "events.subscribe",
                            "params": {"topics": ["light.state"]}})
        await asyncio.gather(*(ws.send(frame) for ws in links))
        await asyncio.gather(*(ws.recv() for ws in links))
    return links


async def one_change(trigger, links: list, frame: str) -> float:
    t0 = time.perf_counter()
    await trigger.send(frame)
    arrivals = await asyncio.gather(*(ws.recv() for ws in links))
    elapsed = time.perf_counter() - t0
    assert all('"event"' in a for a in arrivals)
    return elapsed * 1000


async def run(args: argparse.Namespace) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    daemon, url = await start(PICTL, "serve", "--config", "config/demo.toml", "--simulate", "--listen", "127.0.0.1:0")
    base, base_url = await start(sys.executable, str(ROOT / "bench" / "broadcast_server.py"))
    rows = []
    try:
        admin = await connect(url, additional_headers={"Authorization": "Bearer demo-admin"}, compression=None)
        poke = await connect(base_url, compression=None)
        for n in args.subscribers:
            ours = await subscribe(url, n, "demo-admin")
            theirs = await subscribe(base_url, n, None)
            a, b = [], []
            for i in range(args.repeat):
                toggle = json.dumps({"jsonrpc": "2.0", "id": i, "method": "light.toggle"})
                a.append(await one_change(admin, ours, toggle))
                await asyncio.gather(*(ws.recv() for ws in ours))  # the feedback event follows
                await admin.recv()
                b.append(await one_change(poke, [*theirs, poke], "go"))
            rows.append((n, a, b))
            await asyncio.gather(*(ws.close() for ws in ours + theirs))
        await admin.close()
        await poke.close()
    finally:
        for proc in (daemon, base):
            proc.terminate()
            await proc.wait()
    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, {platform.machine()}")
    print(f"event fan-out, median of {args.repeat} changes [min-max], ms until the last subscriber has it:")
    print(f"{'subscribers':>12} {'pictl':>22} {'bare broadcast':>22} {'ratio':>6}")
    for n, a, b in rows:
        print(f"{n:>12} {statistics.median(a):8.2f} [{min(a):.2f}-{max(a):.2f}] "
              f"{statistics.median(b):8.2f} [{min(b):.2f}-{max(b):.2f}] "
              f"{statistics.median(a) / statistics.median(b):6.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subscribers", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--repeat", type=int, default=15)
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
