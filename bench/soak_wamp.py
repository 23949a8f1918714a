"""The WAMP bridge and the fleet view in the chaos soak (``bench/soak.py --bridge wamp``), and their
checks (bench/partition.py reuses them).

Starts its own Crossbar router (from .venv-crossbar, tests/crossbar.py) and gives the daemon a
``[wamp]`` table (node ``soak``, rejoin backoff capped at 1 s), then ``pictl aggregate`` with
config/fleet.toml (and ``--max-retry-delay 1``) as a child process: the fleet view, whose wall
panel WebSocket is a front door of its own (it does not go through the router). While the soak's
50 WebSocket clients run, it

- calls the node's actions through the fleet panel (``soak.door.open``, ... each with a
  ``request_key``): panel -> aggregator -> router -> node, and back;
- follows the fleet panel's events (``soak.<device>.state``);
- restarts the router every 12-18 s (away for the time Crossbar takes to start again, 2-4 s).

Invariants (added to the soak's):

- lost: a call through the fleet with no reply within its deadline;
- inconsistent / unsafe failure: as the soak's own, against the node's plant record: a confirmed
  result the plant contradicts, a ``-32002`` that left the output unsafe, unless its recovery says
  plainly that the outcome is unknown (a call the router cancelled when the node's link went);
- unavailable yet acted: a ``-32004`` ("nothing was done") for a call the node did run (its audit
  trail has the request_key); an internal error (``-32603``) through the fleet at all;
- unobserved state: a fleet event ``soak.<device>.state`` naming a state the plant did not have in
  the 1.5 s before it arrived;
- slow convergence: after each restart, the fleet's ``system.status`` (the node online, each
  device's online flag and state) does not equal the node's own within 2 s of the router listening
  again; at the end it must equal it;
- the aggregator's tracebacks and ERROR lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from common import stop_child
from soak_base import (
    IDS,
    SAFE,
    TOKENS,
    Call,
    PlantRecord,
    Restart,
    Soaked,
    Violations,
    rpc,
    to_monotonic,
)
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.crossbar import CrossbarRouter, free_port  # noqa: E402

PICTL = str(Path(sys.executable).parent / "pictl")
NODE = "soak"
REALM = "realm1"
ACTIONS = [("door", "open"), ("door", "close"), ("light", "on"), ("light", "off"), ("light", "toggle"),
           ("fan", "on"), ("fan", "off"), ("fan", "toggle")]
CONVERGE_S = 2.0
# The fleet's own deadline for a forwarded action is twice its timeout plus 5 s; without a timeout in
# the call it takes the device's max_timeout (30 s by default): 65 s.
CALL_DEADLINE_S = 70.0
STATE_WINDOW_S = 1.5
SHOWN_STATE = {"open": ("positions", True), "closed": ("positions", False), "on": ("positions", True),
               "off": ("positions", False)}


class Aggregator:
    """``pictl aggregate`` as a child process, its log kept: ERROR lines and tracebacks are findings."""

    def __init__(self, router_url: str, listen: str, launcher: list[str] | None = None,
                 log: Path | None = None) -> None:
        self.router_url = router_url
        self.listen = listen
        self.launcher = launcher or []  # e.g. ip netns exec NAME
        self.log = log  # its whole log is written here
        self.proc: asyncio.subprocess.Process | None = None
        self.errors: list[str] = []
        self._reader: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.listen}/ws"

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.launcher, PICTL, "aggregate", "--wamp", self.router_url, "--realm", REALM, "--config",
            str(ROOT / "config" / "fleet.toml"), "--listen", self.listen, "--max-retry-delay", "1",
            stderr=asyncio.subprocess.PIPE, cwd=ROOT)
        self._reader = asyncio.get_running_loop().create_task(self._read())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                async with connect(self.url, additional_headers={"Authorization": f"Bearer {TOKENS['admin']}"},
                                   open_timeout=5):
                    return
            except (OSError, TimeoutError):
                await asyncio.sleep(0.1)
        raise RuntimeError("pictl aggregate did not start serving")

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        with contextlib.ExitStack() as files:
            out = files.enter_context(self.log.open("w", buffering=1)) if self.log else None
            while line := (await self.proc.stderr.readline()).decode(errors="replace"):
                if out is not None and "controller.security.audit" not in line:
                    out.write(line)
                if " ERROR " in line or " CRITICAL " in line or "Traceback" in line:
                    self.errors.append(line.strip())

    async def stop(self) -> None:
        await stop_child(self.proc, self._reader)


def fleet_differences(fleet: dict[str, Any], node_status: dict[str, Any], node: str) -> list[str]:
    """What the fleet's ``system.status`` says of *node* that the node's own does not."""
    out = []
    if not fleet.get("nodes", {}).get(node, {}).get("online"):
        out.append(f"node {node} offline in the fleet view")
    for name, device in node_status["devices"].items():
        seen = fleet["devices"].get(f"{node}.{name}")
        if seen is None:
            out.append(f"{name} missing")
            continue
        if seen["online"] != device["online"]:
            out.append(f"{name} online {seen['online']}, node says {device['online']}")
        if name in SAFE and (seen.get("state") or {}).get("state") != (device.get("state") or {}).get("state"):
            out.append(f"{name} state {(seen.get('state') or {}).get('state')}, node says "
                       f"{(device.get('state') or {}).get('state')}")
    return out


class WampHook:
    name = "wamp"

    def __init__(self, *, restart_every: tuple[float, float] | None = (12.0, 18.0), callers: int = 3,
                 node: str = NODE) -> None:
        self.restart_every = restart_every  # None: no restarts of its own (bench/partition.py cuts links)
        self.callers = callers
        self.node = node
        self.router: CrossbarRouter | None = None  # its own router (the soak), or None when attached
        self.aggregator: Aggregator | None = None
        self.owns_aggregator = True
        self.soak: Soaked | None = None
        self.node_link: ClientConnection | None = None
        self.fleet_link: ClientConnection | None = None
        self.calls: list[Call] = []
        # From the fleet's events: (arrived, device, state, since: when the node saw it begin), monotonic.
        self.states: list[tuple[float, str, str, float | None]] = []
        self.restarts: list[Restart] = []
        self.counts: dict[str, int] = {"router restarts": 0}
        self.tasks: list[asyncio.Task[None]] = []
        self.rng = random.Random(13)
        self.stopping = False
        self.restarting = False
        self.final_differences: list[str] | None = None

    async def prepare(self, workdir: Path) -> str:
        self.router = CrossbarRouter(realm=REALM, workdir=str(workdir / "crossbar"))
        await asyncio.to_thread(self.router.start)
        return config_section(self.router.url, self.node)

    def attach(self, aggregator: Aggregator) -> None:
        """Use an aggregator someone else runs (bench/partition.py)."""
        self.aggregator, self.owns_aggregator = aggregator, False

    async def start(self, soak: Soaked) -> None:
        self.soak = soak
        self.node_link = await soak.admin()
        if self.aggregator is None:
            assert self.router is not None
            self.aggregator = Aggregator(self.router.url, f"127.0.0.1:{free_port()}",
                                         log=self.router.workdir.parent / "aggregator.log")
            await self.aggregator.start()
        self.fleet_link = await self.fleet()
        if await self.until_converged(time.monotonic(), 30.0) is None:
            raise RuntimeError("the fleet view never showed the node")
        self.tasks = [asyncio.create_task(self.follow())]
        self.tasks += [asyncio.create_task(self.caller(i)) for i in range(self.callers)]
        self.tasks.append(asyncio.create_task(self.chaos()))

    async def fleet(self) -> ClientConnection:
        return await connect(self.aggregator.url if self.aggregator else "",
                             additional_headers={"Authorization": f"Bearer {TOKENS['admin']}"}, open_timeout=20,
                             max_size=None)

    async def finish(self) -> None:
        self.stopping = True  # calls and a restart under way complete (with their reply, its convergence)
        self.tasks[0].cancel()
        if not self.restarting:
            self.tasks[-1].cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        got = await self.until_converged(time.monotonic(), 10.0)
        if got is None:
            assert self.fleet_link is not None and self.node_link is not None
            self.final_differences = fleet_differences(await rpc(self.fleet_link, "system.status"),
                                                       await rpc(self.node_link, "system.status"), self.node)

    def check(self, audit: list[dict[str, Any]]) -> dict[str, Any]:
        assert self.soak is not None
        return self.check_against(self.soak.violations, self.soak.record, audit, self.soak.counts)

    def request_keys(self) -> set[str]:
        return {c.key for c in self.calls if c.key}

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.fleet_link is not None:
            await self.fleet_link.close()
        if self.aggregator is not None and self.owns_aggregator:
            await self.aggregator.stop()
        if self.router is not None:
            await asyncio.to_thread(self.router.close)

    # -- load and chaos ----------------------------------------------------------------------------
    async def caller(self, index: int) -> None:
        """Actions through the fleet panel, one at a time, each with its reply awaited."""
        rng = random.Random(f"wamp caller {index}")
        ws = await self.fleet()
        try:
            while not self.stopping:
                await asyncio.sleep(rng.uniform(0.1, 0.6))
                device, action = rng.choice(ACTIONS)
                params = {"request_key": f"fleet-{uuid.uuid4().hex}"}
                call = Call(f"{device}.{action}", params, time.monotonic(), f"fleet{index}")
                self.calls.append(call)
                ident = next(IDS)
                try:
                    await ws.send(json.dumps({"jsonrpc": "2.0", "id": ident, "method": f"{self.node}.{device}.{action}",
                                              "params": params}))
                    async with asyncio.timeout(CALL_DEADLINE_S):
                        while True:
                            reply = json.loads(await ws.recv())
                            if reply.get("id") == ident:
                                break
                except TimeoutError:
                    continue  # no reply within the fleet's own deadline: lost
                except ConnectionClosed:
                    call.closed = True
                    ws = await self.fleet()
                    continue
                call.replied, call.reply = time.monotonic(), reply
        finally:
            await ws.close()

    async def follow(self) -> None:
        """The fleet panel's state events for the node's devices."""
        ws = await self.fleet()
        try:
            await rpc(ws, "events.subscribe", {"topics": [f"{self.node}.*"]})
            async for frame in ws:
                message = json.loads(frame)
                if message.get("method") != "event":
                    continue
                topic = message["params"]["topic"]
                match = re.fullmatch(rf"{self.node}\.(\w+)\.state", topic)
                if match and match.group(1) in SAFE:
                    data = message["params"]["data"]
                    since = to_monotonic(data["since"]) if isinstance(data.get("since"), str) else None
                    self.states.append((time.monotonic(), match.group(1), str(data.get("state")), since))
        finally:
            await ws.close()

    async def chaos(self) -> None:
        if self.router is None or self.restart_every is None:
            return
        while True:
            await asyncio.sleep(self.rng.uniform(*self.restart_every))
            if self.stopping:
                return
            self.restarting = True
            restart = Restart(time.monotonic())
            self.restarts.append(restart)
            await asyncio.to_thread(self.router.stop)
            await asyncio.sleep(self.rng.uniform(0.3, 1.0))
            await asyncio.to_thread(self.router.start)
            restart.up = time.monotonic()
            self.counts["router restarts"] += 1
            restart.converged = await self.until_converged(restart.up, 20.0)
            self.restarting = False

    async def until_converged(self, since: float, limit: float) -> float | None:
        """When the fleet's status first equalled the node's own (None: not within *limit*)."""
        assert self.fleet_link is not None and self.node_link is not None
        while time.monotonic() < since + limit:
            before = time.monotonic()
            fleet = await rpc(self.fleet_link, "system.status")
            if not fleet_differences(fleet, await rpc(self.node_link, "system.status"), self.node):
                return before
            await asyncio.sleep(0.05)  # comparing two views the way an operator would: by looking again
        return None

    # -- invariants --------------------------------------------------------------------------------
    def check_against(self, v: Violations, record: PlantRecord, audit: list[dict[str, Any]],
                      counts: dict[str, int]) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.counts)
        keyed = {e["params"]["request_key"]: e for e in audit  # the node's own entry of each call through the fleet
                 if isinstance(e.get("params"), dict) and e["params"].get("request_key")}
        acted = {e["params"].get("request_key") for e in audit  # the node ran it (refusals are audited too)
                 if isinstance(e.get("params"), dict) and e.get("outcome") not in ("unavailable", "busy")}
        outcomes: dict[str, int] = {}
        for call in self.calls:
            if call.reply is None:
                label = "connection closed first" if call.closed else "no reply"
                if not call.closed:
                    v.add("lost", {"through the fleet": dataclasses.asdict(call)})
            elif "result" in call.reply:
                label = "confirmed"
                if call.reply["result"].get("confirmed"):
                    if call.key not in acted:
                        v.add("unaudited", {"confirmed through the fleet, no audit entry on the node":
                                            dataclasses.asdict(call)})
                    record.check_confirmed(call, call.reply["result"])
            else:
                code = call.reply["error"].get("code")
                label = f"error {code}"
                if code == -32002:
                    # Judged as the node answered (its entry), not as the answer came back through the
                    # router: the node's next queued action may move the output in between.
                    record.check_safe(call, counts, keyed.get(call.key))
                elif code == -32004 and call.key in acted:
                    v.add("unavailable yet acted", dataclasses.asdict(call))
                elif code == -32603:
                    v.add("internal error through the fleet", dataclasses.asdict(call))
            outcomes[label] = outcomes.get(label, 0) + 1
        out["calls through the fleet"] = outcomes
        checked = 0
        for at, device, state, since in self.states:
            shown = SHOWN_STATE.get(state)
            if shown is None or at < record.started:
                continue
            checked += 1
            # The state names when the node saw it begin: the plant had it then (it may arrive much
            # later, after a link came back). Without that time: shortly before it arrived.
            start, end = (since - STATE_WINDOW_S, since + 0.05) if since is not None else (at - STATE_WINDOW_S, at)
            if not record.had(device, shown[0], shown[1], start, end):
                v.add("unobserved state", {"fleet event": f"{device} {state}",
                                           "soak s": round(at - record.started, 3), **record.context(device, at, at)})
        out["fleet state events checked against the plant"] = checked
        late = [round(r.converged - r.up, 3) if r.converged else None for r in self.restarts if r.up]
        for restart, delay in zip([r for r in self.restarts if r.up], late, strict=True):
            if delay is None or delay > CONVERGE_S:
                v.add("slow convergence", {"after the restart at soak s": round(restart.down - record.started, 1),
                                           "converged after s": delay})
        out["convergence after each restart, s"] = late
        if self.final_differences:
            v.add("final view differs", self.final_differences)
        for line in self.aggregator.errors if self.aggregator and self.owns_aggregator else []:
            v.add("aggregator error logged", line)
        return out


def config_section(url: str, node: str) -> str:
    """The daemon's [wamp] table: rejoins within a second of the router being back."""
    return f'\n[wamp]\nurl = "{url}"\nrealm = "{REALM}"\nnode = "{node}"\nrole = "admin"\nmax_retry_delay = 1.0\n'


def bridge() -> WampHook:
    return WampHook()

