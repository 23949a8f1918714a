"""What the WAMP bridge and the fleet aggregator cost, measured through a real Crossbar router.

1. A call through the router: `pictl.bench.system.ping` answered by a pictl node (`pictl serve
   --simulate` with a [wamp] table: the whole dispatcher path) against `bare.system.ping` answered
   by a bare autobahn callee (this file with --bare-callee: returns {"pong": true}), both child
   processes on the same router, alternating round by round; ratios per round.
2. The aggregator: from a device change on a node (the simulated lamp's feedback moving, stamped
   by the plant on CLOCK_MONOTONIC and read back with sim.timeline) to the fleet panel's WebSocket
   holding the event (`pictl aggregate` with the fleet config, a client subscribed to "*").

    .venv/bin/python bench/wamp.py            # the full run (about a minute)
    .venv/bin/python bench/wamp.py --quick    # seconds: checks that it still works
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from websockets.asyncio.client import connect  # noqa: E402

from tests.crossbar import CrossbarRouter, free_port  # noqa: E402

REALM = "realm1"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def joined(url: str) -> Any:
    """An autobahn session on the router (the benchmark's caller)."""
    from controller.bridges.wamp.bridge import component

    comp = component(url, REALM)
    ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    comp.on("join", lambda session, details: None if ready.done() else ready.set_result(session))
    comp.start(asyncio.get_running_loop())
    return comp, await asyncio.wait_for(ready, 30)


async def bare_callee(url: str) -> None:
    """The baseline: an autobahn callee that answers a ping, nothing else."""
    _comp, session = await joined(url)  # keep the component referenced while serving
    await session.register(lambda: {"pong": True}, "bare.system.ping")
    print("registered", flush=True)
    await asyncio.Event().wait()


async def until_registered(session: Any, uri: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if await session.call("wamp.registration.lookup", uri):
                return
        except Exception:
            pass
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{uri} was never registered")


async def ping_rounds(session: Any, rounds: int, calls: int) -> list[dict[str, float]]:
    out = []
    for _ in range(rounds):
        row: dict[str, float] = {}
        for name, uri in (("pictl", "pictl.bench.system.ping"), ("bare", "bare.system.ping")):
            for _ in range(min(50, calls)):  # warm up
                await session.call(uri)
            times = []
            for _ in range(calls):
                started = time.perf_counter()
                await session.call(uri)
                times.append((time.perf_counter() - started) * 1e6)
            row[f"{name}_p50"] = statistics.median(times)
            row[f"{name}_p99"] = percentile(times, 99)
        out.append(row)
    return out


async def panel_latency(panel_ws: str, session: Any, changes: int) -> list[float]:
    """Device change on the node -> event on the fleet panel's WebSocket, ms."""
    out = []
    async with connect(panel_ws, additional_headers={"Authorization": "Bearer demo-admin"}) as ws:
        await ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "events.subscribe",
                                  "params": {"topics": ["bench.light.state"]}}))
        while json.loads(await ws.recv()).get("id") != 1:
            pass
        for _ in range(changes):
            result = await session.call("pictl.bench.light.toggle")
            target = result["state"]
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
                received = time.monotonic()
                if msg.get("method") == "event" and msg["params"]["data"].get("state") == target:
                    break
            moved = (await session.call("pictl.bench.sim.timeline", device="light"))["moved_at"][-1]
            out.append((received - moved) * 1000)
    return out


async def measure(router: CrossbarRouter, quick: bool) -> None:
    pictl = str(Path(sys.executable).parent / "pictl")
    work = Path(tempfile.mkdtemp(prefix="pictl-bench-wamp-"))
    node_cfg = work / "bench.toml"
    node_cfg.write_text((ROOT / "config" / "demo.toml").read_text().split("\n# A Modbus TCP link")[0]
                        + f'\n[wamp]\nurl = "{router.url}"\nrealm = "{REALM}"\nnode = "bench"\nrole = "admin"\n')
    listen = f"127.0.0.1:{free_port()}"
    children = [
        subprocess.Popen([pictl, "serve", "--config", str(node_cfg), "--simulate", "--listen", "127.0.0.1:0",
                          "--log-level", "WARNING"], stderr=subprocess.DEVNULL),
        subprocess.Popen([sys.executable, __file__, "--bare-callee", router.url], stdout=subprocess.DEVNULL),
        subprocess.Popen([pictl, "aggregate", "--wamp", router.url, "--realm", REALM, "--log-level", "WARNING",
                          "--config", str(ROOT / "config" / "fleet.toml"), "--listen", listen],
                         stderr=subprocess.DEVNULL),
    ]
    comp = None
    try:
        comp, session = await joined(router.url)
        for uri in ("pictl.bench.system.ping", "bare.system.ping", "pictl.fleet.status"):
            await until_registered(session, uri)
        deadline = time.monotonic() + 30
        while not (await session.call("pictl.fleet.status"))["nodes"].get("bench", {}).get("online"):
            if time.monotonic() > deadline:
                raise TimeoutError("the aggregator never saw the node")
            await asyncio.sleep(0.1)
        rounds = await ping_rounds(session, 2 if quick else 7, 100 if quick else 2000)
        latencies = await panel_latency(f"ws://{listen}/ws", session, 10 if quick else 200)
    finally:
        if comp is not None:
            await comp.stop()
        for child in children:
            child.terminate()
        for child in children:
            child.wait(15)
    print(f"Machine: {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores, "
          f"Python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d')}. Router: crossbar, loopback.")
    print()
    print("| measure | pictl node | bare autobahn callee | pictl / bare |")
    print("| --- | --- | --- | --- |")
    for q in ("p50", "p99"):
        pictl_v = [r[f"pictl_{q}"] for r in rounds]
        bare_v = [r[f"bare_{q}"] for r in rounds]
        ratios = [r[f"pictl_{q}"] / r[f"bare_{q}"] for r in rounds]
        print(f"| call through the router {q}, us ({len(rounds)} x {100 if quick else 2000} calls) | "
              f"{statistics.median(pictl_v):.0f} [{min(pictl_v):.0f}-{max(pictl_v):.0f}] | "
              f"{statistics.median(bare_v):.0f} [{min(bare_v):.0f}-{max(bare_v):.0f}] | "
              f"{statistics.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}] |")
    print(f"| device change on a node -> fleet panel, ms ({len(latencies)} changes) | "
          f"p50 {statistics.median(latencies):.1f}, p99 {percentile(latencies, 99):.1f}, "
          f"max {max(latencies):.1f} | | |")


def main() -> int:
    parser = argparse.ArgumentParser(description="WAMP bridge and fleet aggregator benchmarks")
    parser.add_argument("--quick", action="store_true", help="a few calls: checks that the benchmark works")
    parser.add_argument("--bare-callee", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_callee:
        asyncio.run(bare_callee(args.bare_callee))
        return 0
    with CrossbarRouter(realm=REALM) as router:
        asyncio.run(measure(router, args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
