"""The MQTT bridge in the chaos soak (``bench/soak.py --bridge mqtt``), and its checks (bench/partition.py
reuses them).

Starts its own Mosquitto (Debian's, as tests/mosquitto.py does) and gives the daemon an ``[mqtt]``
table (node ``soak``, keepalive 5 s, reconnect backoff capped at 0.25 s). While the soak's 50
WebSocket clients run, it

- watches ``pictl/soak/#`` with a client of its own that reconnects at once after a loss (a Home
  Assistant that is always there), keeping the view a newcomer would get: the node's and every
  device's availability and state;
- commands the door, the light and the fan over ``pictl/soak/<device>/set`` (one command at a time
  per device, each waiting for its outcome);
- restarts the broker every 8-14 s (killed or terminated in turn, away 0.3-2 s, back on the same
  port with nothing retained: ``persistence false``).

Invariants (added to the soak's):

- mqtt command without outcome: a command the daemon received (its audit trail has it, under the
  token ``mqtt:soak``) for which neither an event (``.../event``) nor a new outcome
  (``.../attributes``, retained, republished on every reconnect) arrived;
- mqtt command lost: a command sent while the broker and the bridge were steady (outside each
  restart, from 0.2 s before the broker went until the view converged again) that never reached
  the daemon, beyond those the node says were superseded (a command waiting behind a running one
  on the same device is replaced by a newer one: ``pictl_rpc_dropped_total{reason="superseded"}``).
  Commands sent inside those windows may be dropped by the broker (the bridge connects with a clean
  start, by design: a command queued while pictl was away is never replayed later); they are
  counted, and a dropped command moved nothing (the audit has no entry for it);
- unobserved state: a ``.../state`` the plant never had in the 1.5 s before it arrived (door
  ``open``/``closed`` and switches ``ON``/``OFF`` against the position; door ``opening``/``closing``
  against the relay);
- slow convergence: after each restart, the view a newcomer gets (node online, every device's
  availability and state) does not equal the daemon's own ``system.status`` within 2 s of the
  broker being back; at the end, once the plant settled, it must equal it exactly.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import random
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
from prometheus_client.parser import text_string_to_metric_families
from soak_base import PlantRecord, Restart, Soaked, Violations, audit_span, rpc
from websockets.asyncio.client import ClientConnection

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.mosquitto import Mosquitto  # noqa: E402

NODE = "soak"
QUIET = logging.getLogger("soak.observer")
QUIET.setLevel(logging.CRITICAL)
COMMANDS = {"door": [b"OPEN", b"CLOSE"], "light": [b"ON", b"OFF", b"TOGGLE"], "fan": [b"ON", b"OFF", b"TOGGLE"]}
ACTION = {b"OPEN": "open", b"CLOSE": "close", b"ON": "on", b"OFF": "off", b"TOGGLE": "toggle"}
KINDS = {"door": "door", "light": "switch", "fan": "switch"}
CONVERGE_S = 2.0  # the view equals the daemon's within this after a restart
OUTCOME_DEADLINE_S = 20.0  # a command's outcome: its timeout twice (queue, confirmation) and a reconnect
STATE_WINDOW_S = 1.5  # a published state was the plant's at some moment this long before it arrived
# A published state payload -> (the plant record it is checked against, the level it names).
DOOR_STATES = {"open": ("positions", True), "closed": ("positions", False), "opening": ("outputs", True),
               "closing": ("outputs", False)}
SWITCH_STATES = {"ON": ("positions", True), "OFF": ("positions", False)}


def state_payload(kind: str, state: dict[str, Any]) -> str:
    """The retained state payload the contract gives a door's or a switch's state (README, MQTT)."""
    shown = state.get("state")
    if kind == "door":
        if shown == "moving":  # commanded, not yet observed: the actuator says which way
            return "opening" if state.get("actuator") else "closing"
        return shown if shown in ("open", "closed") else "None"
    return {"on": "ON", "off": "OFF"}.get(shown or "", "None")


@dataclass
class Command:
    device: str
    payload: bytes
    sent: float  # monotonic
    outcome: dict[str, Any] | None = None  # the event or attributes that ended it
    outcome_at: float | None = None


@dataclass
class Seen:
    at: float
    topic: str
    payload: bytes
    retain: bool


@dataclass
class Observer:
    """One MQTT client on ``pictl/<node>/#`` that reconnects at once; keeps every message and the
    view a newcomer would get."""

    host: str
    port: int
    node: str
    seen: list[Seen] = field(default_factory=list)
    view: dict[str, bytes] = field(default_factory=dict)  # topic -> last payload (since the last connect)
    latest: dict[str, bytes] = field(default_factory=dict)  # topic -> last payload ever seen
    client: aiomqtt.Client | None = None  # while connected
    connected_at: float = 0.0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        while True:
            client = aiomqtt.Client(self.host, self.port, protocol=aiomqtt.ProtocolVersion.V5, timeout=5,
                                    logger=QUIET)  # the broker going away is the point
            try:
                async with client:
                    await client.subscribe(f"pictl/{self.node}/#", qos=1)
                    self.view.clear()  # what the broker holds now arrives (retained) after this
                    self.client, self.connected_at = client, time.monotonic()
                    async for message in client.messages:
                        payload = message.payload if isinstance(message.payload, bytes) else b""
                        now = time.monotonic()
                        self.seen.append(Seen(now, message.topic.value, payload, message.retain))
                        self.view[message.topic.value] = self.latest[message.topic.value] = payload
                        self.changed.set()
            except aiomqtt.MqttError:
                pass
            finally:
                self.client = None
            await asyncio.sleep(0.05)  # the broker is away: try again soon

    def differences(self, status: dict[str, Any]) -> list[str]:
        """What the view says that the daemon's ``system.status`` does not (empty: converged)."""
        base = f"pictl/{self.node}"
        out = []
        if self.client is None:
            return ["not connected"]
        if self.view.get(f"{base}/availability") != b"online":
            out.append(f"node availability {self.view.get(f'{base}/availability')!r}")
        for name, device in status["devices"].items():
            want = b"online" if device["online"] else b"offline"
            got = self.view.get(f"{base}/{name}/availability")
            if got != want:
                out.append(f"{name} availability {got!r}, daemon {want!r}")
            if name in KINDS:
                state = state_payload(KINDS[name], device["state"] or {}).encode()
                got = self.view.get(f"{base}/{name}/state")
                if got != state:
                    out.append(f"{name} state {got!r}, daemon {state!r}")
        return out


class MqttHook:
    name = "mqtt"

    def __init__(self, *, restart_every: tuple[float, float] | None = (8.0, 14.0), node: str = NODE) -> None:
        self.restart_every = restart_every  # None: no restarts of its own (bench/partition.py cuts links)
        self.node = node
        self.broker: Mosquitto | None = None  # its own broker (the soak), or None when attached to one
        self.host, self.port = "127.0.0.1", 0  # where the observer reaches the broker
        self.away: list[tuple[float, float]] = []  # spans in which the broker or the bridge was unreachable
        self.hold_until = 0.0  # a command's outcome is waited for at least until then (a link is cut)
        self.observer: Observer | None = None
        self.commands: list[Command] = []
        self.restarts: list[Restart] = []
        self.counts: dict[str, int] = {"broker restarts": 0, "commands sent": 0, "commands refused by the client "
                                       "(broker away)": 0}
        self.tasks: list[asyncio.Task[None]] = []
        self.soak: Soaked | None = None
        self.status_link: ClientConnection | None = None
        self.rng = random.Random(11)
        self.final_differences: list[str] | None = None
        self.superseded: int | None = None  # the node's pictl_rpc_dropped_total{reason="superseded"} at the end
        self.stopping = False
        self.restarting = False  # between stopping the broker and measuring the convergence

    # -- the hook ----------------------------------------------------------------------------------
    async def prepare(self, workdir: Path) -> str:
        self.broker = Mosquitto(workdir)
        await self.broker.start()
        self.port = self.broker.port
        return config_section(f"mqtt://127.0.0.1:{self.broker.port}", self.node)

    def attach(self, host: str, port: int) -> None:
        """Watch a broker someone else runs (bench/partition.py)."""
        self.host, self.port = host, port

    async def start(self, soak: Soaked) -> None:
        self.soak = soak
        self.status_link = await soak.admin()
        self.observer = Observer(self.host, self.port, self.node)
        self.tasks = [asyncio.create_task(self.observer.run())]
        await self.until_converged(time.monotonic(), 30.0, 0.0)  # the bridge has announced everything
        self.tasks += [asyncio.create_task(self.command(device)) for device in COMMANDS]
        self.tasks.append(asyncio.create_task(self.chaos()))  # the last task (finish() lets a restart end)

    async def finish(self) -> None:
        self.stopping = True  # commands and a restart under way complete (with their outcome, its convergence)
        if not self.restarting:
            self.tasks[-1].cancel()
        await asyncio.gather(*self.tasks[1:], return_exceptions=True)  # the observer stays
        at = time.monotonic()
        got = await self.until_converged(at, 10.0, 0.0)
        assert self.soak is not None and self.status_link is not None
        self.superseded = await asyncio.to_thread(superseded_count, self.soak.url)
        self.final_differences = [] if got is not None else self.observer.differences(
            await rpc(self.status_link, "system.status")) if self.observer else ["no observer"]

    def check(self, audit: list[dict[str, Any]]) -> dict[str, Any]:
        assert self.soak is not None
        return self.check_against(self.soak.violations, self.soak.record, audit)

    def request_keys(self) -> set[str]:
        return set()  # a command on .../set carries none

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.broker is not None:
            await self.broker.stop()

    # -- load and chaos ----------------------------------------------------------------------------
    async def command(self, device: str) -> None:
        """One command at a time on *device*, each waiting for its outcome (or its deadline)."""
        assert self.observer is not None
        topic = f"pictl/{self.node}/{device}/set"
        base = f"pictl/{self.node}/{device}"
        rng = random.Random(device)
        while not self.stopping:
            await asyncio.sleep(rng.uniform(0.2, 1.0))
            client = self.observer.client
            if client is None:
                self.counts["commands refused by the client (broker away)"] += 1
                continue
            payload = rng.choice(COMMANDS[device])
            mark = len(self.observer.seen)
            cmd = Command(device, payload, time.monotonic())
            try:
                await client.publish(topic, payload, qos=1)
            except aiomqtt.MqttError:
                self.counts["commands refused by the client (broker away)"] += 1
                continue
            self.commands.append(cmd)
            self.counts["commands sent"] += 1
            deadline = cmd.sent + OUTCOME_DEADLINE_S
            while cmd.outcome is None and time.monotonic() < max(deadline, self.hold_until):
                for seen in self.observer.seen[mark:]:
                    if seen.topic in (f"{base}/event", f"{base}/attributes") and seen.payload:
                        outcome = orjson.loads(seen.payload)
                        if outcome.get("action") == ACTION[payload]:
                            cmd.outcome, cmd.outcome_at = outcome, seen.at
                            break
                mark = len(self.observer.seen) if cmd.outcome is None else mark
                self.observer.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.observer.changed.wait(), 0.5)

    async def chaos(self) -> None:
        if self.broker is None or self.restart_every is None:
            return
        kill = False
        while True:
            await asyncio.sleep(self.rng.uniform(*self.restart_every))
            if self.stopping:
                return
            self.restarting = True
            restart = Restart(time.monotonic())
            self.restarts.append(restart)
            await self.broker.stop(kill=kill)
            kill = not kill
            await asyncio.sleep(self.rng.uniform(0.3, 2.0))
            await self.start_broker()
            restart.up = time.monotonic()
            self.counts["broker restarts"] += 1
            restart.converged = await self.until_converged(restart.up, 15.0, restart.down)
            self.away.append((restart.down - 0.2, restart.converged or restart.up + 15.0))
            self.restarting = False

    async def start_broker(self) -> None:
        assert self.broker is not None
        for _ in range(50):
            try:
                await self.broker.start()
                return
            except RuntimeError:  # the port is not free again yet
                await asyncio.sleep(0.1)
        raise RuntimeError("mosquitto would not start again")

    async def until_converged(self, since: float, limit: float, reconnected_after: float) -> float | None:
        """When the observer's view (connected after *reconnected_after*) first equalled the
        daemon's status (None: not within *limit* of *since*)."""
        assert self.observer is not None and self.status_link is not None
        while time.monotonic() < since + limit:
            before = time.monotonic()
            fresh = self.observer.client is not None and self.observer.connected_at > reconnected_after
            if fresh and not self.observer.differences(await rpc(self.status_link, "system.status")):
                return before
            await asyncio.sleep(0.05)  # comparing two views the way an operator would: by looking again
        return None

    # -- invariants --------------------------------------------------------------------------------
    def check_against(self, v: Violations, record: PlantRecord, audit: list[dict[str, Any]]) -> dict[str, Any]:
        """The invariants, against *record* (one node's plant) and its *audit* trail."""
        assert self.observer is not None
        counts = dict(self.counts)
        mine = sorted(((audit_span(e), e) for e in audit if e.get("token") == f"mqtt:{self.node}"),
                      key=lambda pair: pair[0])
        # Every command the node ran ends in an event or an outcome published after it: the event
        # (not retained) may be lost with a link, the outcome (retained) is published again on reconnect.
        ended = {d: sorted(seen.at for seen in self.observer.seen if seen.payload and seen.topic in (
            f"pictl/{self.node}/{d}/event", f"pictl/{self.node}/{d}/attributes")) for d in COMMANDS}
        for (_start, end), entry in mine:
            device = entry["method"].partition(".")[0]
            after = ended.get(device, [])
            if bisect.bisect_left(after, end - 0.005) == len(after):
                v.add("mqtt command without outcome", {"node": self.node, "audit": entry})
        counts["commands the node ran"] = len(mine)
        # Every command sent reached the node (the latest unmatched one sent before each audit entry
        # is its command), unless a link on its way was down.
        unmatched = sorted(self.commands, key=lambda c: c.sent)
        for (start, _end), entry in mine:
            for i in range(len(unmatched) - 1, -1, -1):
                cmd = unmatched[i]
                if cmd.sent <= start + 0.01 and entry["method"] == f"{cmd.device}.{ACTION[cmd.payload]}":
                    del unmatched[i]
                    break
        dropped, steady = 0, []
        for cmd in unmatched:
            if any(a <= cmd.sent <= b for a, b in self.away):
                dropped += 1  # the broker or the bridge was away: dropped by design (clean start)
            elif any(self._waiting_when_lost(cmd, a, b, mine) for a, b in self.away):
                dropped += 1  # waiting behind one of ours still running when the link went: dropped with it
            else:
                steady.append(cmd)
        # A command waiting behind one still running is replaced by a newer one for the same device (the
        # user's last word wins); the node counts each in pictl_rpc_dropped_total{reason="superseded"}.
        superseded = self.superseded or 0
        for cmd in steady[superseded:]:
            v.add("mqtt command lost", {"node": self.node, "device": cmd.device, "payload": cmd.payload,
                                        "s into the run": round(cmd.sent - record.started, 3),
                                        "unmatched while steady": len(steady), "superseded (node's count)": superseded})
        counts["commands dropped while the broker or the bridge was away"] = dropped
        counts["commands superseded by a newer one (the node's count)"] = superseded
        self.check_states(v, record, counts)
        late = [round((r.converged - r.up) if r.converged else float("inf"), 3) for r in self.restarts
                if r.up]
        for restart, delay in zip([r for r in self.restarts if r.up], late, strict=True):
            if delay > CONVERGE_S:
                node = f"pictl/{self.node}/availability"
                back = next((seen.at for seen in self.observer.seen
                             if seen.at > restart.up and seen.topic == node and seen.payload == b"online"), None)
                v.add("slow convergence", {"after the restart at soak s": round(restart.down - record.started, 1),
                                           "converged after s": delay, "the bridge's 'online' seen after s":
                                           None if back is None else round(back - restart.up, 3)})
        counts["convergence after each restart, s"] = late
        if self.final_differences:
            v.add("final view differs", self.final_differences)
        return counts

    def _waiting_when_lost(self, cmd: Command, a: float, b: float,
                           mine: list[tuple[tuple[float, float], dict[str, Any]]]) -> bool:
        """Whether *cmd* may have been the command waiting on its device when the link went in [a, b]:
        sent before b, no newer command for the device before the outage began, and one of ours
        running on the device during it."""
        if cmd.sent > b or any(c.device == cmd.device and cmd.sent < c.sent <= a for c in self.commands):
            return False
        return any(start <= b and end >= max(a, cmd.sent) for (start, end), e in mine
                   if e["method"].startswith(cmd.device + "."))

    def check_states(self, v: Violations, record: PlantRecord, counts: dict[str, int]) -> None:
        assert self.observer is not None
        checked = 0
        for seen in self.observer.seen:
            head, _, leaf = seen.topic.rpartition("/")
            device = head.rpartition("/")[2]
            if leaf != "state" or device not in KINDS or seen.at < record.started:
                continue
            shown = (DOOR_STATES if KINDS[device] == "door" else SWITCH_STATES).get(seen.payload.decode())
            if shown is None:
                continue  # unknown ("None"): claims nothing
            checked += 1
            kind, level = shown
            # A message published while a link was down arrives when it is back: it may be that old.
            stalled = [a for a, b in self.away if a <= seen.at <= b + 5.0]
            since = min([seen.at, *stalled]) - STATE_WINDOW_S
            if not record.had(device, kind, level, since, seen.at):
                v.add("unobserved state", {"device": device, "published": seen.payload.decode(),
                                           "retained": seen.retain, "soak s": round(seen.at - record.started, 3),
                                           **record.context(device, seen.at, seen.at)})
        counts["published states checked against the plant"] = checked


def superseded_count(ws_url: str) -> int:
    """The node's count of commands superseded before they ran (from its /metrics)."""
    base = ws_url.replace("ws://", "http://").removesuffix("/ws")
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "pictl_rpc_dropped_total" and sample.labels.get("reason") == "superseded":
                return int(sample.value)
    return 0


def config_section(url: str, node: str) -> str:
    """The daemon's [mqtt] table: reconnects within a quarter second, a dead link noticed in 7.5 s."""
    return f'\n[mqtt]\nurl = "{url}"\nnode = "{node}"\nrole = "admin"\nkeepalive = 5\nbackoff_max = 0.25\n'


def bridge() -> MqttHook:
    return MqttHook()
