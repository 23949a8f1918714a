"""Chaos soak: the demo plant under 50 clients, faults, reloads and disconnects, with invariants.

    .venv/bin/python bench/soak.py                  # 10 minutes (the figures in docs/benchmarks.md)
    .venv/bin/python bench/soak.py --duration 60    # what CI runs (bench/run.py --quick calls it)

Starts ``pictl serve --simulate`` on config/demo.toml (with an audit file and a connection limit
for 50 clients) as a child process. For the given duration:

- 50 clients (a quarter with the admin token, the rest with the panel token) mix actions (each
  with a unique ``request_key``, some with a timeout too short to confirm), state reads,
  ``system.status`` and ``system.ping``; every fifth client subscribes to ``*`` and, when it
  reconnects, resumes with ``since_seq`` and ``epoch``. Clients disconnect now and then, some
  right after sending an action (close, or a dropped TCP connection).
- A chaos schedule injects every fault of the plant in turn (door jammed, light no_feedback, fan
  offline, hall_temp unplugged), clears it, and reloads the config with SIGHUP: alternately with
  the light and fan changed (rebuilt) and with nothing changed.
- The plant's own record of every output and position change (``sim.timeline`` with ``since``) is
  collected as it goes; RSS and open fds of the daemon are sampled every 2 s.

Invariants, each reported as a count (the run exits 1 when any is broken, printing the first
offending record of each):

- lost: a request neither answered nor its connection closed within its deadline;
- inconsistent: a confirmed result the plant's record contradicts (the state it names was never
  the plant's during the call; "changed" without the output moving during the call);
- unsafe failure: a ``-32002`` after which the plant's output was not at its safe level;
- unauthorised move: an output change in the plant's record with no action call in the audit
  trail around it (nor a reload, which puts a rebuilt device's output safe);
- unaudited: a confirmed result with no audit entry (matched by request_key), or an audit entry
  with a request_key no client sent;
- event gap: a subscriber saw seq jump, repeat or go back without the daemon flagging a resync;
- fd leak: open fds after the load differ from before it; daemon tracebacks in its log;
- RSS growth after warm-up above --max-rss-growth (MB/hour; checked on runs of 5 minutes or more,
  reported always).

Bridges (MQTT, WAMP) are not part of this branch: ``--bridge module:factory`` loads a
:class:`BridgeHook` that adds its own config, chaos (restarting its broker) and invariants.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import dataclasses
import importlib
import itertools
import json
import os
import platform
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from common import ROOT, Daemon, p50_p99, slope
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

TOKENS = {"admin": "demo-admin", "panel": "demo-panel"}
SAFE = {"door": False, "light": False, "fan": False}  # output levels a failure must leave
SHOWN = {"open": True, "closed": False, "on": True, "off": False}  # result state -> plant position
PANEL_ACTIONS = [("door", "open"), ("door", "close"), ("light", "on"), ("light", "off"), ("light", "toggle")]
ADMIN_ACTIONS = [*PANEL_ACTIONS, ("fan", "on"), ("fan", "off"), ("fan", "toggle"), ("hall_temp", "read")]
FAULTS = [("door", "jammed"), ("light", "no_feedback"), ("fan", "offline"), ("hall_temp", "unplugged")]
TOLERANCE_S = 0.003  # audit times are wall-clock milliseconds; the plant's are monotonic
MONO_TO_WALL = time.time() - time.monotonic()  # both clocks are system-wide: one offset serves


# -- what the clients saw --------------------------------------------------------------------------

@dataclass
class Call:
    method: str
    params: dict[str, Any]
    sent: float  # monotonic
    client: str
    replied: float | None = None
    reply: dict[str, Any] | None = None
    closed: bool = False  # the connection went before a reply: allowed
    abandoned: bool = False  # the client itself dropped the connection right after sending

    @property
    def device(self) -> str:
        return self.method.split(".", 1)[0]

    @property
    def key(self) -> str | None:
        return self.params.get("request_key")


@dataclass
class Violations:
    """Counts per invariant, and the first offending record of each."""

    counts: dict[str, int] = field(default_factory=dict)
    first: dict[str, Any] = field(default_factory=dict)

    def add(self, what: str, record: Any) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1
        self.first.setdefault(what, record)

    def total(self) -> int:
        return sum(self.counts.values())


class Gone(Exception):
    """The connection closed before the reply."""


class BridgeHook(Protocol):
    """What a bridge (MQTT, WAMP) adds to the soak. Load one with ``--bridge module:factory``;
    the factory takes no arguments."""

    name: str

    def config_text(self, workdir: Path) -> str:
        """TOML appended to the soak's config (the bridge's section); may start a broker first."""

    async def start(self, url: str) -> None:
        """The daemon is serving: connect the bridge's own clients."""

    async def chaos(self) -> str | None:
        """One chaos step of its own (restart the broker); returns what it did, for the log."""

    async def finish(self, violations: Violations) -> dict[str, Any]:
        """Stop, check its invariants (adding to *violations*), return its counts for the report."""


def load_bridge(spec: str) -> BridgeHook:
    module, _, name = spec.partition(":")
    factory: Callable[[], BridgeHook] = getattr(importlib.import_module(module), name or "bridge")
    return factory()


# -- the daemon --------------------------------------------------------------------------------------

class SoakDaemon(Daemon):
    """The daemon, with its reloads timed and its tracebacks and ERROR lines kept."""

    def __init__(self, config: Path) -> None:
        super().__init__(config, self._line)
        self.reloads: list[tuple[float, float]] = []  # (SIGHUP sent, "config reloaded" seen), monotonic
        self.tracebacks: list[str] = []
        self.errors: list[str] = []  # ERROR lines (a refused reload would be one)
        self.safety_failures_logged = 0
        self._safety_line = False  # the line before was one: its traceback follows
        self._reloaded = asyncio.Event()

    def _line(self, line: str) -> None:
        after_safety = self._safety_line
        self._safety_line = False
        if "config reloaded from" in line:
            self._reloaded.set()
        elif "Traceback" in line:
            if not after_safety:  # a safety failure's own traceback is part of its report
                self.tracebacks.append(line.strip())
        elif " ERROR " in line or line.startswith("ERROR"):
            if line.rstrip().endswith("FAILED"):  # door, switch and setpoint recovery (their log lines)
                # An output that could not be put back (a Modbus unit gone silent): the daemon
                # must say so, loudly. Counted, not a broken invariant.
                self.safety_failures_logged += 1
                self._safety_line = True
            else:
                self.errors.append(line.strip())

    async def reload(self) -> None:
        """SIGHUP, and wait for the daemon to say it applied the file."""
        self._reloaded.clear()
        sent = time.monotonic()
        self.signal(signal.SIGHUP)
        await asyncio.wait_for(self._reloaded.wait(), 30)
        self.reloads.append((sent, time.monotonic()))


def write_config(path: Path, audit: Path, variant: int, extra: str = "") -> None:
    """The demo config with an audit file and room for the clients; *variant* 1 changes the
    light's and the fan's timeouts (a reload rebuilds them), 0 is the demo's own."""
    text = (ROOT / "config" / "demo.toml").read_text()
    text = text.replace("[server]\n", "[server]\nmax_connections = 400\nmax_connections_per_address = 400\n", 1)
    if variant:
        for old in ('feedback = { gpio = 23, pull = "down" }\ntimeout = 1.0',
                    'output = { modbus = "plant", coil = 0, device_id = 1 }\ntimeout = 1.0'):
            assert old in text, f"config/demo.toml changed: {old!r} not found"
            text = text.replace(old, old.replace("timeout = 1.0", "timeout = 1.25"))
    # A shorter event buffer than the demo's, so that a subscriber away for a few seconds is
    # sometimes told to resync rather than always replayed.
    text += f'\n[events]\nbuffer = 200\n\n[audit]\nfile = "{audit}"\nmax_bytes = 1073741824\n{extra}'
    tmp = path.with_suffix(".new")
    tmp.write_text(text)
    tmp.replace(path)  # the daemon never reads half a file


# -- clients -----------------------------------------------------------------------------------------

class Link:
    """One WebSocket connection: requests by id, events checked for gaps."""

    def __init__(self, soak: Soak, client: Client, ws: ClientConnection) -> None:
        self.soak = soak
        self.client = client
        self.ws = ws
        self.pending: dict[int, tuple[Call, asyncio.Future[dict[str, Any]]]] = {}
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                message = json.loads(frame)
                if message.get("method") == "event":
                    self.client.on_event(message["params"])
                    continue
                entry = self.pending.pop(message.get("id"), None) if isinstance(message.get("id"), int) else None
                if entry is None:
                    self.soak.violations.add("unexpected reply", message)
                    continue
                call, future = entry
                call.replied, call.reply = time.monotonic(), message
                if call.method == "events.subscribe":
                    self.client.on_subscribed(call, message)
                if not future.done():
                    future.set_result(message)
        except ConnectionClosed:
            pass
        finally:
            for call, future in self.pending.values():
                call.closed = True
                if not future.done():
                    future.set_exception(Gone())
            self.pending.clear()

    async def send(self, method: str, params: dict[str, Any]) -> tuple[Call, asyncio.Future[dict[str, Any]]]:
        if self.reader.done():
            raise Gone()
        call = Call(method, params, time.monotonic(), self.client.name)
        self.soak.calls.append(call)
        ident = next(self.soak.ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)  # "never retrieved"
        self.pending[ident] = (call, future)
        try:
            await self.ws.send(json.dumps({"jsonrpc": "2.0", "id": ident, "method": method, "params": params}))
        except ConnectionClosed:
            call.closed = True
            self.pending.pop(ident, None)
            raise Gone() from None
        return call, future

    async def call(self, method: str, params: dict[str, Any] | None = None, deadline: float = 15.0) -> Call:
        """The call with its reply; raises Gone when the connection closed first. A reply that does
        not come within *deadline* while the connection stays open is a lost request."""
        call, future = await self.send(method, params or {})
        try:
            await asyncio.wait_for(asyncio.shield(future), deadline)
        except TimeoutError:
            self.soak.violations.add("lost", dataclasses.asdict(call))
            raise Gone() from None
        return call

    async def close(self, abort: bool = False) -> None:
        if abort and self.ws.transport is not None:
            self.ws.transport.abort()  # the TCP connection drops: no close handshake
        else:
            await self.ws.close()
        await self.reader


class Client:
    """One of the 50: reconnects, acts, reads, pings, and (some) follows events."""

    def __init__(self, soak: Soak, index: int) -> None:
        self.soak = soak
        self.name = f"c{index}"
        self.role = "admin" if index % 4 == 0 else "panel"
        self.subscriber = index % 5 == 1
        self.rng = random.Random(index)
        self.link: Link | None = None
        self.last_seq: int | None = None  # the newest event seq seen, across reconnects
        self.epoch: str | None = None
        self.events = 0

    # -- events ------------------------------------------------------------------------------------
    def on_event(self, params: dict[str, Any]) -> None:
        seq = params["seq"]
        self.events += 1
        self.soak.counts["events received"] += 1
        if self.last_seq is not None and seq != self.last_seq + 1:
            self.soak.violations.add("event gap", {"client": self.name, "after": self.last_seq, "got": seq,
                                                   "topic": params.get("topic")})
        self.last_seq = seq

    def on_subscribed(self, call: Call, message: dict[str, Any]) -> None:
        """Runs in the reader, before any later frame: replayed events have arrived already."""
        result = message.get("result")
        if not isinstance(result, dict):
            self.soak.violations.add("subscribe failed", message)
            return
        self.epoch = result["epoch"]
        if "since_seq" not in call.params:
            self.last_seq = result["seq"]
        elif result.get("resync"):
            self.soak.counts["resumes flagged resync"] += 1
            self.last_seq = result["seq"]  # told: read system.status, go on from here
        else:
            self.soak.counts["resumes filled"] += 1
            self.soak.counts["events replayed"] += result.get("replayed", 0)
            if self.last_seq != result["seq"]:
                self.soak.violations.add("event gap", {"client": self.name, "resumed from": call.params["since_seq"],
                                                       "replayed up to": self.last_seq, "daemon at": result["seq"]})
                self.last_seq = result["seq"]

    # -- the loop ----------------------------------------------------------------------------------
    async def connect(self) -> Link:
        while True:
            try:
                ws = await connect(self.soak.daemon.url, open_timeout=20, compression=None,
                                   additional_headers={"Authorization": f"Bearer {TOKENS[self.role]}"})
                break
            except (InvalidStatus, InvalidHandshake, OSError, TimeoutError) as exc:
                self.soak.counts["connect retries"] += 1
                if time.monotonic() > self.soak.stop_at:
                    raise Gone() from exc
                await asyncio.sleep(0.2)  # a refused handshake (connection limit): try again shortly
        self.soak.counts["connections"] += 1
        link = Link(self.soak, self, ws)
        if self.subscriber:
            params: dict[str, Any] = {"topics": ["*"]}
            if self.last_seq is not None:
                params.update(since_seq=self.last_seq, epoch=self.epoch)
            await link.call("events.subscribe", params)
        return link

    async def run(self) -> None:
        await asyncio.sleep(self.rng.random())  # spread the first connections
        while time.monotonic() < self.soak.stop_at:
            try:
                if self.link is None:
                    self.link = await self.connect()
                await self.step(self.link)
            except Gone:
                self.link = None
                if self.subscriber:  # away for a while: the resume has a gap to fill, or to flag
                    await asyncio.sleep(self.rng.uniform(0.2, 8.0))
                continue
            await asyncio.sleep(self.rng.uniform(0.05, 0.5))  # think time: load, not a wait for anything
        if self.link is not None:
            await self.drain(self.link)

    async def drain(self, link: Link) -> None:
        """The run is over: every request still out gets its reply or its deadline, then close."""
        waiting = [future for _, future in list(link.pending.values())]
        _done, not_done = await asyncio.wait(waiting, timeout=20) if waiting else (set(), set())
        for call, future in list(link.pending.values()):
            if future in not_done:
                self.soak.violations.add("lost", dataclasses.asdict(call))
        await link.close()

    async def step(self, link: Link) -> None:
        roll = self.rng.random()
        actions = ADMIN_ACTIONS if self.role == "admin" else PANEL_ACTIONS
        if roll < 0.40:
            device, action = self.rng.choice(actions)
            params: dict[str, Any] = {"request_key": f"soak-{uuid.uuid4().hex}"}
            if device == "door" and self.rng.random() < 0.1:
                params["timeout"] = 0.15  # shorter than the door's travel: must fail safe
            with contextlib.suppress(Gone):
                await link.call(f"{device}.{action}", params)
        elif roll < 0.60:
            device = self.rng.choice(["door", "light", "fan", "hall_temp"])
            await link.call(f"{device}.state")
        elif roll < 0.68:
            await link.call("system.status")
        elif roll < 0.93:
            call = await link.call("system.ping")
            assert call.replied is not None
            self.soak.pings.append((call.replied - call.sent) * 1000)
        elif roll < 0.97:
            device, action = self.rng.choice(actions)  # an action, then the client vanishes
            call, _ = await link.send(f"{device}.{action}", {"request_key": f"soak-{uuid.uuid4().hex}"})
            call.abandoned = True
            await asyncio.sleep(self.rng.uniform(0, 0.05))
            self.soak.counts["disconnects mid-action"] += 1
            await link.close(abort=self.rng.random() < 0.5)
            raise Gone()
        else:
            self.soak.counts["reconnects"] += 1
            await link.close()
            raise Gone()


# -- the soak ----------------------------------------------------------------------------------------

class Soak:
    def __init__(self, args: argparse.Namespace, bridge: BridgeHook | None, workdir: Path | None = None) -> None:
        self.args = args
        self.bridge = bridge
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="pictl-soak-"))
        self.config = self.workdir / "pictl.toml"
        self.audit = self.workdir / "audit.jsonl"
        self.extra = bridge.config_text(self.workdir) if bridge else ""
        write_config(self.config, self.audit, 0, self.extra)
        self.daemon = SoakDaemon(self.config)
        self.violations = Violations()
        self.counts: dict[str, int] = {k: 0 for k in (
            "connections", "connect retries", "reconnects", "disconnects mid-action", "events received",
            "resumes filled", "resumes flagged resync", "events replayed", "faults injected", "reloads",
            "failures that said the output could not be made safe")}
        self.calls: list[Call] = []
        self.pings: list[float] = []
        self.ids = itertools.count(1)
        self.history: dict[str, dict[str, list[tuple[float, Any]]]] = {
            d: {"outputs": [], "positions": []} for d in SAFE}
        self.admins: list[ClientConnection] = []  # the soak's own links: chaos, plant record, checks
        self.samples: list[tuple[float, int, int]] = []  # (monotonic, RSS KiB, fds)
        self.started = 0.0
        self.stop_at = 0.0
        self.chaos_log: list[str] = []
        self.overheads: list[float] = []  # ms from the plant's position change to the client holding the result

    async def run(self) -> int:
        ready_s = await self.daemon.start()
        print(f"pictl ready in {ready_s * 1000:.0f} ms at {self.daemon.url}; work dir {self.workdir}", file=sys.stderr)
        try:
            if self.bridge:
                await self.bridge.start(self.daemon.url)
            admin, chaos, collector = [await self.admin() for _ in range(3)]  # one each: a recv() per link
            await self.until_online(admin)
            fds_before = self.daemon.fds()
            self.started = time.monotonic()
            self.stop_at = self.started + self.args.duration
            clients = [Client(self, i) for i in range(self.args.clients)]
            workers = [asyncio.create_task(c.run()) for c in clients]
            watchers = [asyncio.create_task(self.chaos(chaos)), asyncio.create_task(self.sample()),
                        asyncio.create_task(self.collect(collector))]
            results = await asyncio.gather(*workers, return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException):
                    self.violations.add("client crashed", repr(r))
            for w in watchers:
                w.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
            await admin.close()
            admin = await self.admin()  # a fresh link: the idle one may have been closed under load
            await self.settle(admin)
            await self.fetch_history(admin)
            fds_after = await self.fds_settled(fds_before)
            self.check(fds_before, fds_after)
            bridge_counts = await self.bridge.finish(self.violations) if self.bridge else {}
        finally:
            for ws in self.admins:
                await ws.close()
            await self.daemon.stop()
        return self.report(fds_before, fds_after, bridge_counts)

    async def admin(self) -> ClientConnection:
        ws = await connect(self.daemon.url, additional_headers={"Authorization": "Bearer demo-admin"},
                           compression=None, open_timeout=20)
        self.admins.append(ws)
        return ws

    async def rpc(self, ws: ClientConnection, method: str, params: dict[str, Any] | None = None) -> Any:
        ident = next(self.ids)
        await ws.send(json.dumps({"jsonrpc": "2.0", "id": ident, "method": method, "params": params or {}}))
        while True:
            reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if reply.get("id") == ident:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    async def until_online(self, admin: ClientConnection, limit: float = 30.0) -> None:
        deadline = time.monotonic() + limit
        while not all(d["online"] for d in (await self.rpc(admin, "system.status"))["devices"].values()):
            if time.monotonic() > deadline:
                raise RuntimeError("devices not online")
            await asyncio.sleep(0.1)  # polling the daemon's own status: the way an operator would

    async def chaos(self, admin: ClientConnection) -> None:
        """Every fault in turn, held 2-3 s then cleared; a reload after each round of faults,
        alternately rebuilding the light and fan and changing nothing."""
        rng = random.Random(7)
        variant = 0
        for step in itertools.count():
            await asyncio.sleep(rng.uniform(1.0, 2.0))
            device, fault = FAULTS[step % len(FAULTS)]
            await self.rpc(admin, "sim.fault", {"device": device, "fault": fault})
            self.counts["faults injected"] += 1
            self.chaos_log.append(f"{time.monotonic() - self.started:7.1f} s  fault {device} {fault}")
            await asyncio.sleep(rng.uniform(2.0, 3.0))
            await self.rpc(admin, "sim.clear", {"device": device})
            if step % len(FAULTS) == len(FAULTS) - 1:
                variant = 1 - variant if (step // len(FAULTS)) % 2 == 0 else variant
                write_config(self.config, self.audit, variant, self.extra)
                await self.daemon.reload()
                self.counts["reloads"] += 1
                self.chaos_log.append(f"{time.monotonic() - self.started:7.1f} s  reload (variant {variant})")
            if self.bridge:
                did = await self.bridge.chaos()
                if did:
                    self.chaos_log.append(f"{time.monotonic() - self.started:7.1f} s  {did}")

    async def sample(self) -> None:
        while True:
            self.samples.append((time.monotonic(), self.daemon.rss_kib(), self.daemon.fds()))
            await asyncio.sleep(2.0)

    async def collect(self, admin: ClientConnection) -> None:
        while True:
            await asyncio.sleep(0.5)
            await self.fetch_history(admin)

    async def fetch_history(self, admin: ClientConnection) -> None:
        """The plant's record since what we hold (a device being rebuilt by a reload is skipped)."""
        for device, held in self.history.items():
            since = max((r[-1][0] for r in held.values() if r), default=self.started - 1.0)
            try:
                got = await self.rpc(admin, "sim.timeline", {"device": device, "since": since})
            except RuntimeError:
                continue
            for kind in ("outputs", "positions"):
                held[kind].extend((t, v) for t, v in got[kind] if not held[kind] or t > held[kind][-1][0])

    async def settle(self, admin: ClientConnection) -> None:
        """Faults cleared, every device back online: the state the fds are compared in."""
        for device in SAFE | {"hall_temp": False}:
            with contextlib.suppress(RuntimeError):
                await self.rpc(admin, "sim.clear", {"device": device})
        await self.until_online(admin)

    async def fds_settled(self, before: int) -> int:
        """Open fds once the connections have gone (closing takes the server a moment)."""
        deadline = time.monotonic() + 10
        while (now := self.daemon.fds()) != before and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        return now

    # -- invariants --------------------------------------------------------------------------------
    def check(self, fds_before: int, fds_after: int) -> None:
        v = self.violations
        audit = [json.loads(line) for line in self.audit.read_text().splitlines() if line.strip()]
        by_key = {e["params"].get("request_key"): e for e in audit
                  if isinstance(e.get("params"), dict) and e["params"].get("request_key")}
        sent_keys = {c.key for c in self.calls if c.key}
        for key, entry in by_key.items():
            if key not in sent_keys:
                v.add("unaudited", {"audit entry for a call nobody sent": entry})
        for call in self.calls:
            if call.reply is None or call.device not in SAFE:
                continue
            result, error = call.reply.get("result"), call.reply.get("error")
            if result is not None and result.get("confirmed"):
                if call.key not in by_key:
                    v.add("unaudited", {"confirmed result without an audit entry": dataclasses.asdict(call)})
                self.check_confirmed(call, result)
            elif error is not None and error.get("code") == -32002:
                self.check_safe(call)
        self.check_moves(audit)
        if fds_after != fds_before:
            v.add("fd leak", {"fds before the load": fds_before, "after": fds_after})
        for line in self.daemon.tracebacks:
            v.add("daemon traceback", line)
        for line in self.daemon.errors:
            v.add("daemon error logged", line)
        growth = self.rss_growth_mb_h()
        if growth is not None and self.args.duration >= 300 and growth > self.args.max_rss_growth:
            v.add("RSS growth", {"MB per hour after warm-up": round(growth, 2), "limit": self.args.max_rss_growth})

    def level_at(self, device: str, kind: str, at: float) -> Any:
        records = self.history[device][kind]
        i = bisect.bisect_right(records, (at, float("inf"))) - 1 if records else -1
        return records[i][1] if i >= 0 else None

    def during(self, device: str, kind: str, start: float, end: float) -> list[tuple[float, Any]]:
        records = self.history[device][kind]
        lo = bisect.bisect_right(records, (start, float("inf")))
        hi = bisect.bisect_right(records, (end, float("inf")))
        return records[lo:hi]

    def check_confirmed(self, call: Call, result: dict[str, Any]) -> None:
        """The state a confirmed result names was the plant's at some moment of the call, and a
        "changed" result had the plant's output move to it during the call."""
        assert call.replied is not None
        want = SHOWN.get(result.get("state"))  # type: ignore[arg-type]
        if want is None:
            self.violations.add("inconsistent", {"unknown state": dataclasses.asdict(call)})
            return
        device, start, end = call.device, call.sent, call.replied
        positions = self.during(device, "positions", start, end)
        seen = self.level_at(device, "positions", start) == want or any(v == want for _, v in positions)
        if not seen:
            self.violations.add("inconsistent", {"call": dataclasses.asdict(call),
                                                 **self.context(device, start, end)})
            return
        if result.get("changed"):
            # Something moved to it during the call: the output (the door's relay is energised to
            # open, a switch's output to be on), or the position (a feedback that was stuck and
            # came free while the output already stood there).
            outputs = self.during(device, "outputs", start, end)
            if not any(v == want for _, v in [*outputs, *positions]):
                self.violations.add("inconsistent", {"changed, yet nothing moved": dataclasses.asdict(call),
                                                     **self.context(device, start, end)})
                return
            moved = [t for t, v in positions if v == want]
            if moved and device != "fan":  # the fan's coil has no travel: nothing to time
                self.overheads.append((end - moved[-1]) * 1000)

    def context(self, device: str, start: float, end: float) -> dict[str, Any]:
        """The plant's record around a call, relative to its start, for the report."""
        return {f"plant {kind} (s from the call's start)": [(round(t - start, 4), v) for t, v in
                                                             self.during(device, kind, start - 3, end + 1)]
                for kind in ("outputs", "positions")} | {"reloads (s from the call's start)": [
                    (round(a - start, 3), round(b - start, 3)) for a, b in self.daemon.reloads]}

    def check_safe(self, call: Call) -> None:
        """After a -32002 the output is at its safe level: it was put there during the call, or it
        was there all along."""
        assert call.replied is not None
        device, safe = call.device, SAFE[call.device]
        writes = self.during(device, "outputs", call.sent, call.replied)
        if any(v == safe for _, v in writes):
            return
        if not writes and self.level_at(device, "outputs", call.sent) == safe:
            return
        recovery = str(call.reply.get("error", {}).get("data", {}).get("recovery", "")) if call.reply else ""
        if not writes and "FAILED" in recovery:
            # The device did not answer (a Modbus unit gone silent): nothing reached it, and the
            # error says the output could not be made safe. Honest, and counted.
            self.counts["failures that said the output could not be made safe"] += 1
            return
        self.violations.add("unsafe failure", {"call": dataclasses.asdict(call), **self.context(device, call.sent,
                                                                                                   call.replied)})

    def check_moves(self, audit: list[dict[str, Any]]) -> None:
        """Every output change the plant recorded falls inside an audited action call on that
        device (or a reload, which closes a rebuilt device to safe)."""
        windows: dict[str, list[tuple[float, float]]] = {d: [] for d in SAFE}
        for entry in audit:
            device, _, _action = entry["method"].partition(".")
            if device not in windows or entry.get("token") is None or entry.get("role") is None:
                continue
            end = _wall(entry["time"]) - MONO_TO_WALL + 0.001  # the time is truncated to the millisecond
            windows[device].append((end - entry["elapsed_ms"] / 1000 - TOLERANCE_S, end + TOLERANCE_S))
        reloads = [(s - TOLERANCE_S, e + TOLERANCE_S) for s, e in self.daemon.reloads]
        for device, records in self.history.items():
            spans = sorted(windows[device] + reloads)
            starts = [s for s, _ in spans]
            reach = list(itertools.accumulate((e for _, e in spans), max))  # furthest end so far
            for t, value in records["outputs"]:
                if t < self.started:
                    continue
                i = bisect.bisect_right(starts, t) - 1
                if i < 0 or reach[i] < t:
                    self.violations.add("unauthorised move", {"device": device, "plant monotonic": t,
                                                              "value": value, "soak s": round(t - self.started, 3)})

    @property
    def warmup_s(self) -> float:
        """--warmup, or by default the at-most-once window (300 s: the daemon remembers each keyed
        action that long, so its memory fills until then) on runs of 10 minutes or more, and the
        first fifth of shorter runs (whose growth figure is then only indicative)."""
        if self.args.warmup is not None:
            return float(self.args.warmup)
        return 300.0 if self.args.duration >= 600 else self.args.duration / 5

    def rss_growth_mb_h(self) -> float | None:
        """Least-squares slope of RSS after the warm-up."""
        warm = self.started + self.warmup_s
        points = [(t, rss) for t, rss, _ in self.samples if t >= warm]
        if len(points) < 3:
            return None
        return slope(points) * 3600 / 1024

    # -- report ------------------------------------------------------------------------------------
    def report(self, fds_before: int, fds_after: int, bridge_counts: dict[str, Any]) -> int:
        actions = [c for c in self.calls if "." in c.method and c.device in (*SAFE, "hall_temp")
                   and not c.method.endswith(".state")]
        outcomes: dict[str, int] = {}
        for c in actions:
            if c.reply is None:
                label = "connection closed first" if c.closed else "no reply"
            elif "result" in c.reply:
                label = "confirmed" if c.reply["result"].get("confirmed", True) else "ok"
            else:
                label = f"error {c.reply['error']['code']}"
            outcomes[label] = outcomes.get(label, 0) + 1
        rss = [s[1] for s in self.samples]
        growth = self.rss_growth_mb_h()
        out = {
            "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}, load {os.getloadavg()}",
            "duration_s": self.args.duration,
            "clients": self.args.clients,
            "requests": len(self.calls),
            "safety failures logged by the daemon": self.daemon.safety_failures_logged,
            "actions": outcomes,
            **self.counts,
            "invariants broken": {name: self.violations.counts.get(name, 0) for name in INVARIANTS}
            | {k: n for k, n in self.violations.counts.items() if k not in INVARIANTS},
            "RSS MiB start/max/end": [round(rss[0] / 1024, 1), round(max(rss) / 1024, 1), round(rss[-1] / 1024, 1)]
            if rss else None,
            "warm-up s": self.warmup_s,
            "RSS growth after warm-up, MB/hour": None if growth is None else round(growth, 2),
            "RSS MiB each minute": [round(rss / 1024, 2) for t, rss, _ in self.samples
                                    if int((t - self.started) / 2) % 30 == 0],
            "open fds before/after the load": [fds_before, fds_after],
            "open fds max under load": max((s[2] for s in self.samples), default=None),
            "action overhead ms p50/p99": p50_p99(self.overheads),
            "system.ping ms p50/p99 under load": p50_p99(self.pings),
            **({"bridge": bridge_counts} if bridge_counts else {}),
        }
        print(json.dumps(out, indent=2))
        if self.args.verbose:
            print("\n".join(self.chaos_log), file=sys.stderr)
        if self.violations.total():
            print("BROKEN INVARIANTS; first offending record of each:", file=sys.stderr)
            for what, record in self.violations.first.items():
                print(f"  {what}: {json.dumps(record, default=str)[:2000]}", file=sys.stderr)
            print(f"config and audit trail kept in {self.workdir}", file=sys.stderr)
            return 1
        shutil.rmtree(self.workdir, ignore_errors=True)
        return 0


INVARIANTS = ("lost", "inconsistent", "unsafe failure", "unauthorised move", "unaudited", "event gap", "fd leak",
              "RSS growth")


def _wall(stamp: str) -> float:
    from datetime import datetime
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--max-rss-growth", type=float, default=1.0, help="MB per hour, checked on runs >= 300 s")
    ap.add_argument("--warmup", type=float, help="seconds before RSS growth is fitted (default: 300 on runs of "
                    "10 minutes or more, else a fifth of the run)")
    ap.add_argument("--bridge", help="module:factory of a BridgeHook (MQTT, WAMP) to soak with the daemon")
    ap.add_argument("-v", "--verbose", action="store_true", help="print the chaos schedule as it ran")
    args = ap.parse_args()
    bridge = load_bridge(args.bridge) if args.bridge else None
    return asyncio.run(Soak(args, bridge).run())


if __name__ == "__main__":
    sys.exit(main())
