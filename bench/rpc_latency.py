"""Round-trip latency of system.ping (vs a bare websockets echo, alternating) and of door.open/close.

Both servers run as child processes; this process is the client. Prints
medians, p99, and the ratio to the baseline measured in the same run.

    .venv/bin/python bench/rpc_latency.py [--calls 2000] [--rounds 5] [--doors 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
PICTL = str(Path(sys.executable).parent / "pictl")
TRAVEL_MS = 300.0  # the demo door's simulated travel (controller/simulation.py DOOR_TRAVEL_S)


async def start(*argv: str) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(*argv, stderr=asyncio.subprocess.PIPE, cwd=ROOT)
    assert proc.stderr is not None
    while True:
        line = (await proc.stderr.readline()).decode()
        if not line:
            raise RuntimeError(f"{argv[0]} exited before serving")
        match = re.search(r"serving (ws://\S+)", line)
        if match:
            asyncio.get_running_loop().create_task(proc.stderr.read())  # keep draining its log
            return proc, match.group(1)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def pings(url: str, calls: int, token: str | None) -> list[float]:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    out = []
    async with connect(url, additional_headers=headers, compression=None) as ws:
        for i in range(calls):
            frame = json.dumps({"jsonrpc": "2.0", "id": i, "method": "system.ping"})
            t = time.perf_counter()
            await ws.send(frame)
            await ws.recv()
            out.append((time.perf_counter() - t) * 1e6)
    return out


async def doors(url: str, n: int) -> tuple[list[float], list[float]]:
    overhead, server = [], []
    async with connect(url, additional_headers={"Authorization": "Bearer demo-admin"}, compression=None) as ws:
        for i in range(n):
            for action in ("open", "close"):
                t = time.perf_counter()
                await ws.send(json.dumps({"jsonrpc": "2.0", "id": i, "method": f"door.{action}"}))
                reply = json.loads(await ws.recv())
                total_ms = (time.perf_counter() - t) * 1e3
                overhead.append(total_ms - TRAVEL_MS)
                server.append(reply["result"]["elapsed_ms"] - TRAVEL_MS)
    return overhead, server


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--doors", type=int, default=20)
    args = ap.parse_args()
    daemon, url = await start(PICTL, "serve", "--config", "config/demo.toml", "--simulate",
                              "--listen", "127.0.0.1:0")
    echo, echo_url = await start(sys.executable, str(ROOT / "bench" / "echo_server.py"))
    try:
        await pings(url, 200, "demo-admin")  # warm up both
        await pings(echo_url, 200, None)
        p50s, p99s, e50s, e99s = [], [], [], []
        for _ in range(args.rounds):  # alternate so drift in machine load hits both
            ours = await pings(url, args.calls, "demo-admin")
            base = await pings(echo_url, args.calls, None)
            p50s.append(pct(ours, 0.5))
            p99s.append(pct(ours, 0.99))
            e50s.append(pct(base, 0.5))
            e99s.append(pct(base, 0.99))
        overhead, server = await doors(url, args.doors)
    finally:
        for proc in (daemon, echo):
            proc.terminate()
            await proc.wait()
    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, {platform.machine()}")
    print(f"system.ping round trip, {args.rounds} rounds x {args.calls} calls (median of rounds, [min-max]):")
    for name, a, b in (("p50", p50s, e50s), ("p99", p99s, e99s)):
        ratio = [x / y for x, y in zip(a, b, strict=True)]
        print(f"  {name}: pictl {statistics.median(a):7.1f} us   bare echo {statistics.median(b):7.1f} us   "
              f"ratio {statistics.median(ratio):.2f} [{min(ratio):.2f}-{max(ratio):.2f}]")
    print(f"door.open/close, {len(overhead)} actions, minus the plant's {TRAVEL_MS:.0f} ms travel:")
    print(f"  client round trip overhead: p50 {pct(overhead, 0.5):.2f} ms, p99 {pct(overhead, 0.99):.2f} ms")
    print(f"  server elapsed_ms overhead: p50 {pct(server, 0.5):.2f} ms, p99 {pct(server, 0.99):.2f} ms")


if __name__ == "__main__":
    asyncio.run(main())
