"""A partitioned building: nodes, broker, router and aggregator on a network whose links are cut.

    sudo .venv/bin/python bench/partition.py            # about 5 minutes of cuts
    sudo .venv/bin/python bench/partition.py --quick    # CI (make bench-quick): one cut of each kind

Needs root (network namespaces) and ``ip``. Each part runs in a namespace of its own (bench/netns.py):
two nodes (``pictl serve --simulate`` on the demo plant, with ``[mqtt]`` and ``[wamp]``), Debian's
Mosquitto, a Crossbar router (from .venv-crossbar) and ``pictl aggregate`` (the fleet view and its
panel). While each node's MQTT commands (bench/soak_mqtt.py) and actions through the fleet panel
(bench/soak_wamp.py) run, one data link at a time is cut (``ip link set down``) and restored: a
node's, the broker's, the router's or the aggregator's; short cuts (1-4 s: TCP carries on once the
link is back) and long ones (18-25 s: longer than the router's and the node's WAMP ping timeouts
and than 1.5x the MQTT keepalive, so sessions are dropped and joined again).

Invariants, each counted; the run exits 1 when any is broken (first offending record printed):

- everything bench/soak_mqtt.py and bench/soak_wamp.py check, per node: MQTT commands that the
  node received end in an event or an outcome, and commands are dropped only while a link on their
  path was cut; published and fleet states are the plant's; calls through the fleet are answered
  (lost otherwise), their results agree with the plant, and an action cut off mid-way is reported as
  ``-32002`` whose recovery says the outcome is unknown (or, when the output is safe, whatever
  the node says): never a success it did not have, never ``-32004`` ("nothing was done") for a call
  the node ran, never an internal error;
- every output change in a node's plant falls inside an audited action on that node;
- after each restore, the retained MQTT view and the fleet view equal each node's own status
  within ``--converge`` seconds (2 by default) of the link carrying again: a TCP connection that
  stalled during a short cut sends again only at its next retransmission, up to about the cut's
  length after the restore (RFC 6298 backoff; the report shows both figures);
- at the end, each node's outputs are where its own state says (a switch's ``output``, a door's
  ``actuator``), and its plant agrees;
- no traceback or ERROR line in any pictl process's log.

The namespaces have no route out and take their addresses from 198.18.0.0/15; they and their links
are removed at the end, on failure and on SIGTERM too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import PICTL, ROOT
from netns import Host, Network
from soak import SoakDaemon
from soak_base import TOKENS, PlantRecord, Violations, read_audit, rpc
from soak_mqtt import MqttHook
from soak_mqtt import config_section as mqtt_section
from soak_wamp import REALM, Aggregator, WampHook
from soak_wamp import config_section as wamp_section
from websockets.asyncio.client import ClientConnection, connect

from tests.crossbar import CrossbarRouter, crossbar_executable
from tests.mosquitto import MOSQUITTO, Mosquitto

MQTT_PORT, WAMP_PORT, NODE_PORT, PANEL_PORT = 1883, 8080, 8765, 8780
NODES = ("n1", "n2")
OUTPUT_FIELD = {"door": "actuator", "light": "output", "fan": "output"}  # where a state names its output


@dataclass
class Cut:
    host: str
    start: float
    end: float = 0.0  # restored
    converged: dict[str, float | None] = field(default_factory=dict)  # view -> seconds after the restore


class Node:
    """One node: its daemon in its namespace, its plant record, what the hooks need of it."""

    def __init__(self, host: Host, workdir: Path, violations: Violations, broker: Host, router_url: str) -> None:
        self.host = host
        self.name = host.name
        self.violations = violations
        self.record = PlantRecord(violations, label=host.name)
        self.counts: dict[str, int] = {"failures that said the output could not be made safe": 0}
        self.audit = workdir / f"{host.name}-audit.jsonl"
        config = workdir / f"{host.name}.toml"
        text = (ROOT / "config" / "demo.toml").read_text()
        text += f'\n[audit]\nfile = "{self.audit}"\nmax_bytes = 1073741824\n'
        text += mqtt_section(f"mqtt://{broker.data}:{MQTT_PORT}", host.name)
        text += wamp_section(router_url, host.name)
        config.write_text(text)
        self.daemon = SoakDaemon(config, [*host.run, PICTL])
        self.daemon.listen = f"{host.mgmt}:{NODE_PORT}"
        self.links: list[ClientConnection] = []
        self.mqtt = MqttHook(restart_every=None, node=host.name)
        self.wamp = WampHook(restart_every=None, callers=2, node=host.name)

    @property
    def url(self) -> str:
        return self.daemon.url

    async def admin(self) -> ClientConnection:
        ws = await connect(self.url, additional_headers={"Authorization": f"Bearer {TOKENS['admin']}"},
                           open_timeout=20, max_size=None)
        self.links.append(ws)
        return ws

    async def collect(self) -> None:
        ws = await self.admin()
        while True:
            await self.record.fetch(ws)
            await asyncio.sleep(0.5)

    async def check_outputs(self) -> dict[str, Any]:
        """Each output is where the node's own state says, and the plant agrees."""
        ws = await self.admin()
        await self.record.fetch(ws)
        status = await rpc(ws, "system.status")
        seen = {}
        for device, key in OUTPUT_FIELD.items():
            said = (status["devices"][device].get("state") or {}).get(key)  # a bool, or "on"/"off"
            plant = self.record.level_at(device, "outputs", time.monotonic())
            seen[device] = [said, plant]
            if said is None or (said in (True, "on")) != bool(plant):
                self.violations.add("output not where the node says", {"node": self.name, "device": device,
                                                                       "node says": said, "plant": plant})
        return seen


class Partition:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(tempfile.mkdtemp(prefix="pictl-partition-"))
        self.net = Network()
        self.broker_host = self.net.add("broker")
        self.router_host = self.net.add("router")
        self.agg_host = self.net.add("agg")
        node_hosts = [self.net.add(name) for name in NODES]
        self.violations = Violations()
        self.broker = Mosquitto(self.workdir, MQTT_PORT, host="0.0.0.0", launcher=self.broker_host.run)
        self.router: CrossbarRouter | None = None
        self.router_url = f"ws://{self.router_host.data}:{WAMP_PORT}/ws"
        self.aggregator = Aggregator(self.router_url, f"{self.agg_host.mgmt}:{PANEL_PORT}", list(self.agg_host.run),
                                     log=self.workdir / "aggregator.log")
        self.nodes = [Node(h, self.workdir, self.violations, self.broker_host, self.router_url) for h in node_hosts]
        self.cuts: list[Cut] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.rng = random.Random(args.seed)
        self.started = 0.0
        self.outputs: dict[str, Any] = {}

    async def run(self) -> int:
        try:
            self.net.build()
            await self.start_everything()
            await self.schedule()
            await self.finish()
            return self.report()
        finally:
            await self.stop_everything()
            self.net.remove()

    async def start_everything(self) -> None:
        await self.broker.start()
        self.router = CrossbarRouter(port=WAMP_PORT, realm=REALM, workdir=str(self.workdir / "crossbar"),
                                     host=self.router_host.data, launcher=self.router_host.run)
        await asyncio.to_thread(self.router.start)
        for node in self.nodes:
            await node.daemon.start()
        await self.aggregator.start()
        self.started = time.monotonic()
        for node in self.nodes:
            node.record.started = self.started
            node.mqtt.attach(self.broker_host.mgmt, MQTT_PORT)
            node.wamp.attach(self.aggregator)
            await node.mqtt.start(node)
            await node.wamp.start(node)
            self.tasks.append(asyncio.create_task(node.collect()))
        print(f"started in {self.workdir}: broker {self.broker_host.data}, router {self.router_url}, "
              f"nodes {', '.join(n.url for n in self.nodes)}, fleet panel {self.aggregator.url}", file=sys.stderr)

    def plan(self) -> list[tuple[str, float]]:
        """Which link is cut, for how long."""
        hosts = [*NODES, "broker", "router", "agg"]
        if self.args.quick:
            return [("n1", 20.0), ("broker", 3.0), ("router", 3.0), ("agg", 3.0), ("n2", 2.0)]
        out: list[tuple[str, float]] = []
        total = 0.0
        while total < self.args.duration:
            host = self.rng.choice(hosts)
            length = self.rng.uniform(18, 25) if self.rng.random() < 0.35 else self.rng.uniform(1, 4)
            out.append((host, length))
            total += length + 8
        return out

    async def schedule(self) -> None:
        for host, length in self.plan():
            await asyncio.sleep(self.rng.uniform(2.0, 4.0))  # actions under way when the link goes
            cut = Cut(host, time.monotonic())
            self.cuts.append(cut)
            self.net.set_cut(host, True)
            for node in self.nodes:
                if host in (node.name, "broker"):
                    node.mqtt.hold_until = float("inf")  # a command's outcome may wait for the link
            print(f"{cut.start - self.started:7.1f} s  cut {host} for {length:.1f} s", file=sys.stderr)
            await asyncio.sleep(length)
            self.net.set_cut(host, False)
            cut.end = time.monotonic()
            await self.converge(cut)
            print(f"{time.monotonic() - self.started:7.1f} s  restored {host}; converged {cut.converged}",
                  file=sys.stderr)

    async def converge(self, cut: Cut) -> None:
        """How long after the restore each node's MQTT view and fleet view equalled its status."""
        async def one(label: str, waiting: Any) -> None:
            at = await waiting
            cut.converged[label] = None if at is None else round(max(0.0, at - cut.end), 3)

        await asyncio.gather(*(one(f"{n.name} mqtt", n.mqtt.until_converged(cut.end, 60.0, 0.0)) for n in self.nodes),
                             *(one(f"{n.name} fleet", n.wamp.until_converged(cut.end, 60.0)) for n in self.nodes))
        for node in self.nodes:
            if cut.host in (node.name, "broker"):
                mqtt_back = cut.converged.get(f"{node.name} mqtt")
                node.mqtt.away.append((cut.start - 0.2, cut.end + (60.0 if mqtt_back is None else mqtt_back)))
                node.mqtt.hold_until = time.monotonic() + 10.0  # an outcome republished on reconnect

    async def finish(self) -> None:
        for node in self.nodes:
            await node.mqtt.finish()
            await node.wamp.finish()
        self.outputs = {node.name: await node.check_outputs() for node in self.nodes}

    async def stop_everything(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for node in self.nodes:
            for hook in (node.mqtt, node.wamp):
                with contextlib.suppress(Exception):
                    await hook.close()
            for ws in node.links:
                with contextlib.suppress(Exception):
                    await ws.close()
        with contextlib.suppress(Exception):
            await self.aggregator.stop()
        for node in self.nodes:
            with contextlib.suppress(Exception):
                await node.daemon.stop()
        if self.router is not None:
            await asyncio.to_thread(self.router.close)
        with contextlib.suppress(Exception):
            await self.broker.stop()

    def report(self) -> int:
        v = self.violations
        per_node: dict[str, Any] = {}
        for node in self.nodes:
            audit = read_audit(node.audit)
            node.record.check_moves(audit)
            per_node[node.name] = {"mqtt": node.mqtt.check_against(v, node.record, audit),
                                   "fleet": node.wamp.check_against(v, node.record, audit, node.counts),
                                   **node.counts}
            for line in node.daemon.tracebacks + node.daemon.errors:
                v.add("pictl error logged", {"node": node.name, "line": line})
        for line in self.aggregator.errors:
            v.add("pictl error logged", {"aggregator": line})
        for cut in self.cuts:
            for view, delay in cut.converged.items():
                if delay is None or delay > self.args.converge + tcp_wait(cut.end - cut.start):
                    v.add("slow convergence", {"cut": cut.host, "length s": round(cut.end - cut.start, 1),
                                               "view": view, "converged after s": delay})
        out = {
            "machine": f"{os.cpu_count()} cores, load {os.getloadavg()}",
            "cuts": [{"host": c.host, "at s": round(c.start - self.started, 1), "length s": round(c.end - c.start, 1),
                      "converged after s": c.converged} for c in self.cuts],
            "nodes": per_node,
            "outputs at the end [node says, plant]": self.outputs,
            "invariants broken": v.counts,
        }
        print(json.dumps(out, indent=1, default=str))
        if v.total():
            print("BROKEN INVARIANTS; first offending record of each:", file=sys.stderr)
            for what, record in v.first.items():
                print(f"  {what}: {json.dumps(record, default=str)[:2000]}", file=sys.stderr)
            print(f"configs and audit trails kept in {self.workdir}", file=sys.stderr)
            return 1
        shutil.rmtree(self.workdir, ignore_errors=True)
        return 0


def tcp_wait(cut: float, rto: float = 0.2) -> float:
    """How long after a cut of *cut* seconds a stalled TCP connection may wait to send again: its
    retransmissions back off (RFC 6298), doubling from a 200 ms timeout, so the next one after the
    link is back can come up to about the cut's length later. Nothing above TCP can hurry it. Past
    15 s the connections have been given up (WAMP pings: 10 s + 5 s; MQTT: 1.5 x the 5 s keepalive)
    and new ones are made at once."""
    return min(cut, 15.0) + rto


async def main(args: argparse.Namespace) -> int:
    partition = Partition(args)
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)  # the finally clauses remove the namespaces
    try:
        return await partition.run()
    except asyncio.CancelledError:
        print("bench/partition.py: stopped (SIGTERM); namespaces and processes removed", file=sys.stderr)
        return 1


def missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "needs ip (iproute2)"
    if MOSQUITTO is None:
        return "needs mosquitto"
    if crossbar_executable() is None:
        return "needs crossbar (make crossbar)"
    return None


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one cut of each kind (CI)")
    ap.add_argument("--duration", type=float, default=300.0, help="seconds of cuts (full runs)")
    ap.add_argument("--converge", type=float, default=2.0, help="seconds after a restore for the views to agree")
    ap.add_argument("--seed", type=int, default=1)
    parsed = ap.parse_args()
    why = missing()
    if why is not None:
        print(f"bench/partition.py: {why}", file=sys.stderr)
        sys.exit(1 if os.environ.get("CI") else 0)
    sys.exit(asyncio.run(main(parsed)))
