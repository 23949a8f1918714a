"""The fleet demo (`make demo-fleet`): a Crossbar router, three simulated nodes and the aggregator,
all on loopback, and the URL of the one wall panel that shows and drives every node's devices.

    .venv/bin/python scripts/demo_fleet.py [--nodes 3] [--listen 127.0.0.1:8780]

Each node is `pictl serve --simulate` on the demo plant with a `[wamp]` table (node pi01, pi02, ...);
the aggregator is `pictl aggregate --config config/fleet.toml`. Ctrl-C stops everything. The
router comes from `.venv-crossbar` (`make crossbar` installs it once).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.crossbar import CrossbarRouter, crossbar_executable, free_port  # noqa: E402

REALM = "realm1"
READY_DEADLINE_S = 60.0


def node_config(url: str, node: str) -> str:
    """The demo plant's config with a [wamp] table. The demo's `admin` role goes over WAMP so that
    `sim.fault` can be tried from the router too: a real node gets a role of its own."""
    demo = (ROOT / "config" / "demo.toml").read_text()
    return demo + f'\n[wamp]\nurl = "{url}"\nrealm = "{REALM}"\nnode = "{node}"\nrole = "admin"\n'


def pictl() -> str:
    return str(Path(sys.executable).parent / "pictl")


async def wait_for_fleet(panel_url: str, nodes: list[str], deadline: float) -> None:
    """Until the aggregator's fleet.status shows every node online."""
    last = None
    while time.monotonic() < deadline:
        try:
            async with connect(panel_url, additional_headers={"Authorization": "Bearer demo-admin"}) as ws:
                while time.monotonic() < deadline:
                    await ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "fleet.status"}))
                    last = json.loads(await ws.recv()).get("result", {}).get("nodes", {})
                    if all(last.get(n, {}).get("online") for n in nodes):
                        return
                    await asyncio.sleep(0.1)
        except OSError:
            await asyncio.sleep(0.1)
    raise TimeoutError(f"the fleet did not come up: {last}")


class Fleet:
    """The demo's processes: router, nodes, aggregator. Tests drive it too (kill a node, ...)."""

    def __init__(self, nodes: int = 3, listen: str = "127.0.0.1:0") -> None:
        host, _, port_text = listen.rpartition(":")
        self.listen = f"{host}:{port_text if port_text != '0' else free_port()}"
        self.names = [f"pi{i:02d}" for i in range(1, nodes + 1)]
        self.work = Path(tempfile.mkdtemp(prefix="pictl-fleet-"))
        self.router = CrossbarRouter(realm=REALM, workdir=str(self.work / "router"))
        self.nodes: dict[str, subprocess.Popen[bytes]] = {}
        self.aggregator: subprocess.Popen[bytes] | None = None

    @property
    def panel_url(self) -> str:
        return f"http://{self.listen}/"

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with open(self.work / f"{name}.log", "ab") as log:
            return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def start_node(self, name: str) -> None:
        path = self.work / f"{name}.toml"
        path.write_text(node_config(self.router.url, name))
        self.nodes[name] = self._spawn(name, [pictl(), "serve", "--config", str(path), "--simulate",
                                              "--listen", "127.0.0.1:0"])

    def kill_node(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.nodes.pop(name)
        process.send_signal(sig)
        process.wait(30)

    def start(self) -> None:
        self.router.start()
        for name in self.names:
            self.start_node(name)
        self.aggregator = self._spawn("aggregate", [
            pictl(), "aggregate", "--wamp", self.router.url, "--realm", REALM,
            "--config", str(ROOT / "config" / "fleet.toml"), "--listen", self.listen])
        asyncio.run(wait_for_fleet(f"ws://{self.listen}/ws", self.names, time.monotonic() + READY_DEADLINE_S))

    def running(self) -> bool:
        return all(c.poll() is None for c in (*self.nodes.values(), self.aggregator) if c is not None)

    def stop(self, keep_logs: bool = False) -> None:
        children = [c for c in (*self.nodes.values(), self.aggregator) if c is not None]
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(5)
        self.nodes.clear()
        self.aggregator = None
        self.router.stop()
        if not keep_logs:
            shutil.rmtree(self.work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=3, help="simulated nodes (default 3)")
    parser.add_argument("--listen", default="127.0.0.1:8780", help="the fleet panel's HOST:PORT (0: a free port)")
    args = parser.parse_args()
    if crossbar_executable() is None:
        print("demo-fleet: crossbar is not installed: run `make crossbar` once (its own venv, ~2 min, ~350 MB)",
              file=sys.stderr)
        return 1
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    fleet = Fleet(args.nodes, args.listen)
    try:
        fleet.start()
        print(f"router: {fleet.router.url} (realm {REALM})", flush=True)
        print(f"nodes: {', '.join(fleet.names)} (simulated demo plants; logs in {fleet.work})", flush=True)
        print(f"fleet panel: {fleet.panel_url} (token demo-panel)", flush=True)
        print("stop with Ctrl-C", flush=True)
        while not stopping and fleet.running():
            time.sleep(0.2)
        return 0 if stopping else 1
    finally:
        fleet.stop(keep_logs=os.environ.get("PICTL_KEEP_LOGS") is not None)


if __name__ == "__main__":
    sys.exit(main())
