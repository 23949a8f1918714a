"""How long the demo takes to notice an outage and to recover from it, end to end.

Starts ``pictl serve --config config/demo.toml --simulate`` as a subprocess,
then for each device and fault: ``sim.fault``, poll ``system.status`` every
10 ms until the device is reported offline; ``sim.clear``, poll until it is
online again. Prints min / median / max over the rounds.

    .venv/bin/python bench/outage.py --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
POLL_S = 0.01  # status polling period: the resolution of the figures


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Rpc:
    def __init__(self, ws) -> None:
        self.ws = ws
        self.next_id = 0

    async def call(self, method: str, params: dict | None = None) -> dict:
        self.next_id += 1
        await self.ws.send(json.dumps({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params or {}}))
        reply = json.loads(await self.ws.recv())
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply["result"]

    async def online(self, device: str) -> bool:
        return (await self.call("system.status"))["devices"][device]["online"]

    async def until(self, device: str, online: bool, limit: float = 30.0) -> float:
        started = time.monotonic()
        while await self.online(device) != online:
            if time.monotonic() - started > limit:
                raise TimeoutError(f"{device} not {'online' if online else 'offline'} after {limit} s")
            await asyncio.sleep(POLL_S)
        return time.monotonic() - started


async def measure(url: str, rounds: int) -> None:
    async with connect(url, additional_headers={"Authorization": "Bearer demo-admin"}) as ws:
        rpc = Rpc(ws)
        for device, fault in (("fan", "offline"), ("hall_temp", "unplugged")):
            await rpc.until(device, True)
            noticed, recovered = [], []
            for _ in range(rounds):
                await asyncio.sleep(1.0 + random.random())  # a random phase against the poll and the line period
                await rpc.call("sim.fault", {"device": device, "fault": fault})
                noticed.append(await rpc.until(device, False))
                await asyncio.sleep(0.5 + 3.5 * random.random())  # an outage of 0.5-4 s
                await rpc.call("sim.clear", {"device": device})
                recovered.append(await rpc.until(device, True))
            for what, values in (("offline after fault", noticed), ("online after clear", recovered)):
                print(f"{device:10s} {fault:10s} {what:20s} min {min(values):5.2f} s  median "
                      f"{statistics.median(values):5.2f} s  max {max(values):5.2f} s  (n={len(values)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    port = free_port()
    pictl = Path(sys.executable).parent / "pictl"
    daemon = subprocess.Popen([str(pictl), "serve", "--config", str(ROOT / "config" / "demo.toml"), "--simulate",
                               "--listen", f"127.0.0.1:{port}"], stderr=subprocess.DEVNULL,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        asyncio.run(measure(f"ws://127.0.0.1:{port}/ws", args.rounds))
    finally:
        daemon.terminate()
        daemon.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
