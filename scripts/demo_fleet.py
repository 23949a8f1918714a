"""The fleet demo (`make demo-fleet`): a Crossbar router, three simulated nodes and the aggregator,
all on loopback, and the URL of the one wall panel that shows and drives every node's devices.

    .venv/bin/python scripts/demo_fleet.py [--nodes 3] [--listen 127.0.0.1:8780]

Each node is `pictl serve --simulate` on the demo plant with a `[wamp]` table (node pi01, pi02, ...)
and a WebSocket port of its own; the aggregator is `pictl aggregate --config config/fleet.toml`.
A part that stops (a node killed to see the panel show it down) is reported, and the rest keep
serving; Enter (or SIGHUP) starts whatever stopped again, on the same port, and the fleet reads
it afresh. Ctrl-C stops everything. Logs stay in their folder when something stopped on its own
(always with PICTL_KEEP_LOGS set). The router comes from `.venv-crossbar` (`make crossbar`).
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
import threading
import time
from pathlib import Path

from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.crossbar import CrossbarRouter, crossbar_executable, free_port  # noqa: E402

REALM = "realm1"
READY_DEADLINE_S = 60.0
STOP_DEADLINE_S = 15.0
ROUTER = "router"
AGGREGATOR = "aggregator"
CALLED = {ROUTER: "the router", AGGREGATOR: "the aggregator (the fleet panel)"}  # else a node's name
AGAIN = {ROUTER: "the nodes and the aggregator rejoin it by themselves",
         AGGREGATOR: "the panel reconnects by itself"}  # a node: the fleet reads it afresh


def node_config(url: str, node: str) -> str:
    """The demo plant's config with a [wamp] table. The demo's `admin` role goes over WAMP so that
    `sim.fault` can be tried from the router too: a real node gets a role of its own."""
    demo = (ROOT / "config" / "demo.toml").read_text()
    return demo + f'\n[wamp]\nurl = "{url}"\nrealm = "{REALM}"\nnode = "{node}"\nrole = "admin"\n'


def pictl() -> str:
    return str(Path(sys.executable).parent / "pictl")


def ended(code: int) -> str:
    """How a child ended, in words: "killed by SIGKILL", "exited with 1"."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with {code}"


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
    """The demo's processes: router, nodes, aggregator, each restartable on the same port."""

    def __init__(self, nodes: int = 3, listen: str = "127.0.0.1:0") -> None:
        host, _, port_text = listen.rpartition(":")
        self.listen = f"{host}:{port_text if port_text != '0' else free_port()}"
        self.names = [f"pi{i:02d}" for i in range(1, nodes + 1)]
        self.work = Path(tempfile.mkdtemp(prefix="pictl-fleet-"))
        self.router = CrossbarRouter(realm=REALM, workdir=str(self.work / "router"))
        self.ports = {name: free_port() for name in self.names}  # each node's own WebSocket
        self.processes: dict[str, subprocess.Popen[bytes]] = {}  # node names and AGGREGATOR
        self.stopped: dict[str, str] = {}  # what stopped on its own -> how it ended
        self.something_stopped = False  # the logs are worth keeping

    @property
    def panel_url(self) -> str:
        return f"http://{self.listen}/"

    def node_url(self, name: str) -> str:
        return f"ws://127.0.0.1:{self.ports[name]}/ws"

    def log(self, name: str) -> Path:
        return self.router.log_path if name == ROUTER else self.work / f"{name}.log"

    def _argv(self, name: str) -> list[str]:
        if name == AGGREGATOR:
            return [pictl(), "aggregate", "--wamp", self.router.url, "--realm", REALM,
                    "--config", str(ROOT / "config" / "fleet.toml"), "--listen", self.listen]
        path = self.work / f"{name}.toml"
        path.write_text(node_config(self.router.url, name))
        return [pictl(), "serve", "--config", str(path), "--simulate", "--listen", f"127.0.0.1:{self.ports[name]}"]

    def start_part(self, name: str) -> None:
        """Start one part (again): the router, a node or the aggregator."""
        self.stopped.pop(name, None)
        if name == ROUTER:
            self.router.process = None
            self.router.start()
            return
        with open(self.log(name), "ab") as log:  # its own session: the terminal's Ctrl-C is ours to pass on
            self.processes[name] = subprocess.Popen(self._argv(name), stdout=log, stderr=subprocess.STDOUT,
                                                    stdin=subprocess.DEVNULL, start_new_session=True)

    def start(self) -> None:
        self.router.start()
        for name in (*self.names, AGGREGATOR):
            self.start_part(name)
        asyncio.run(wait_for_fleet(f"ws://{self.listen}/ws", self.names, time.monotonic() + READY_DEADLINE_S))

    def pid(self, name: str) -> int:
        process = self.router.process if name == ROUTER else self.processes[name]
        assert process is not None
        return process.pid

    def newly_stopped(self) -> dict[str, str]:
        """Parts that ended on their own since the last look -> how they ended."""
        news = {}
        parts: dict[str, subprocess.Popen[bytes] | None] = {ROUTER: self.router.process, **self.processes}
        for name, process in parts.items():
            if name in self.stopped or process is None or process.poll() is None:
                continue
            news[name] = self.stopped[name] = ended(process.returncode)
        self.something_stopped |= bool(news)
        return news

    def restart_stopped(self) -> dict[str, str | None]:
        """Start every part that stopped, the router first (the others join it): name -> why it
        could not start, or None."""
        again: dict[str, str | None] = {}
        for name in sorted(self.stopped, key=lambda name: name != ROUTER):
            how = self.stopped[name]
            try:
                self.start_part(name)
                again[name] = None
            except (OSError, RuntimeError, TimeoutError) as exc:
                self.stopped[name] = how
                again[name] = str(exc)
        return again

    def stop(self, keep_logs: bool = False) -> None:
        children = [self.processes.pop(AGGREGATOR, None), *self.processes.values()]
        for child in children:
            if child is not None and child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            if child is None:
                continue
            try:
                child.wait(STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(5)
        self.processes.clear()
        self.router.stop()
        if not keep_logs:
            shutil.rmtree(self.work, ignore_errors=True)


def say(text: str) -> None:
    print(text, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=3, help="simulated nodes (default 3)")
    parser.add_argument("--listen", default="127.0.0.1:8780", help="the fleet panel's HOST:PORT (0: a free port)")
    args = parser.parse_args()
    if crossbar_executable() is None:
        print("demo-fleet: crossbar is not installed: run `make crossbar` once (its own venv, ~2 min, ~350 MB)",
              file=sys.stderr)
        return 1
    stopping = threading.Event()
    wanted = threading.Event()  # Enter or SIGHUP: start again what stopped

    def stop(*_: object) -> None:
        stopping.set()

    def enter() -> None:
        for _ in sys.stdin:  # ends at EOF (no terminal): SIGHUP still works
            wanted.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, lambda *_: wanted.set())
    fleet = Fleet(args.nodes, args.listen)
    try:
        try:
            fleet.start()
        except (OSError, RuntimeError, TimeoutError) as exc:
            fleet.something_stopped = True
            print(f"demo-fleet: {exc}", file=sys.stderr)
            return 1
        say(f"router: {fleet.router.url} (realm {REALM}), pid {fleet.pid(ROUTER)}")
        for name in fleet.names:
            say(f"node {name}: {fleet.node_url(name)}, pid {fleet.pid(name)} (a simulated demo plant)")
        say(f"aggregator: pid {fleet.pid(AGGREGATOR)}; logs in {fleet.work}")
        say(f"fleet panel: {fleet.panel_url} (token demo-panel)")
        say(f"kill a node (kill -9 {fleet.pid(fleet.names[-1])}) to see it go down: the rest keep serving;"
            " press Enter here to start it again")
        say("stop with Ctrl-C")
        threading.Thread(target=enter, name="enter", daemon=True).start()
        while not stopping.wait(0.2):
            for name, how in fleet.newly_stopped().items():
                running = [CALLED.get(n, n) for n in (ROUTER, *fleet.names, AGGREGATOR) if n not in fleet.stopped]
                say(f"{CALLED.get(name, name)} stopped ({how}); still running: {', '.join(running) or 'nothing'}. "
                    f"Its log: {fleet.log(name)}. Press Enter (or kill -HUP {os.getpid()}) to start it again")
            if wanted.is_set():
                wanted.clear()
                for name, failed in fleet.restart_stopped().items():
                    say(f"{CALLED.get(name, name)} did not start: {failed}" if failed else
                        f"{CALLED.get(name, name)} started again, pid {fleet.pid(name)}: "
                        f"{AGAIN.get(name, 'the fleet reads it afresh once it joins')}")
        return 0
    finally:
        keep = fleet.something_stopped or os.environ.get("PICTL_KEEP_LOGS") is not None
        fleet.stop(keep_logs=keep)
        if keep:
            say(f"logs kept in {fleet.work}")


if __name__ == "__main__":
    sys.exit(main())
