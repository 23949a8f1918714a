"""What the chaos soak, its bridge hooks and the partition benchmark share: calls as a client saw
them, the violations found, one plant's own record (``sim.timeline`` with ``since``) and the
checks made against it.

The plant records every output change (a relay energised, a coil written) and position change (a
contact, a feedback) in its own clock, CLOCK_MONOTONIC, which is system-wide: a time stamped here
with ``time.monotonic()`` compares with it directly (network namespaces share the clock too).
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import itertools
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection

TOKENS = {"admin": "demo-admin", "panel": "demo-panel"}
SAFE = {"door": False, "light": False, "fan": False}  # output levels a failure must leave
SHOWN = {"open": True, "closed": False, "on": True, "off": False}  # result state -> plant position
TOLERANCE_S = 0.003  # audit times are wall-clock milliseconds; the plant's are monotonic
MONO_TO_WALL = time.time() - time.monotonic()  # both clocks are system-wide: one offset serves...
OFFSETS: list[tuple[float, float]] = []  # ...unless the wall clock is slewed: (monotonic, its offset), as sampled
IDS = itertools.count(1)  # request ids, unique across the run
OUTCOME_UNKNOWN = "outcome unknown"  # what a -32002's recovery says when nobody can tell whether it moved


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
class Restart:
    """A broker's or router's restart during a bridge soak (monotonic times)."""

    down: float  # it stopped
    up: float = 0.0  # listening again
    converged: float | None = None  # the view a newcomer gets equalled the daemon's


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


class Soaked(Protocol):
    """What a bridge hook may use of the soak it joins."""

    url: str  # the daemon's WebSocket
    violations: Violations
    record: PlantRecord
    counts: dict[str, int]

    async def admin(self) -> ClientConnection: ...


class BridgeHook(Protocol):
    """What a bridge (MQTT, WAMP) adds to the soak: ``--bridge mqtt``, ``--bridge wamp``, or any
    ``--bridge module:factory`` (the factory takes no arguments)."""

    name: str

    async def prepare(self, workdir: Path) -> str:
        """Start the broker or router; return the TOML appended to the daemon's config."""

    async def start(self, soak: Soaked) -> None:
        """The daemon is serving: start the bridge's own observers, load and chaos (restarts)."""

    async def finish(self) -> None:
        """The load is over and the plant settled: stop the load, let outcomes arrive, check the
        final convergence (what the bridge shows is what the daemon says)."""

    def check(self, audit: list[dict[str, Any]]) -> dict[str, Any]:
        """Its invariants against the plant's record and the audit trail; its counts for the report."""

    def request_keys(self) -> set[str]:
        """The request_keys of the calls it sent (the audit trail may name them)."""

    async def close(self) -> None:
        """Stop everything it started (always called)."""


async def rpc(ws: ClientConnection, method: str, params: dict[str, Any] | None = None, timeout: float = 30) -> Any:
    """One call on a link nobody else reads; RuntimeError for an error reply."""
    ident = next(IDS)
    await ws.send(json.dumps({"jsonrpc": "2.0", "id": ident, "method": method, "params": params or {}}))
    while True:
        reply = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if reply.get("id") == ident:
            if "error" in reply:
                raise RuntimeError(f"{method}: {reply['error']}")
            return reply["result"]


def wall(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def note_clock() -> None:
    """Sample the wall clock's offset from the monotonic one (the soak does every 2 s)."""
    OFFSETS.append((time.monotonic(), time.time() - time.monotonic()))


def to_monotonic(stamp: str) -> float:
    """A wall-clock ISO stamp (the daemon's audit, a state's since) on the monotonic clock, with the
    offset sampled nearest to it (NTP may slew the wall clock by milliseconds over an hour)."""
    at = wall(stamp)
    if not OFFSETS:
        return at - MONO_TO_WALL
    i = bisect.bisect_left(OFFSETS, (at - MONO_TO_WALL, 0.0))
    near = min(OFFSETS[max(0, i - 1):i + 1], key=lambda o: abs(o[0] + o[1] - at))
    return at - near[1]


def clock_drift_ms() -> float:
    """How far the sampled offsets spread (0: the wall clock kept step with the monotonic one)."""
    return round((max(o for _, o in OFFSETS) - min(o for _, o in OFFSETS)) * 1000, 3) if OFFSETS else 0.0


def read_audit(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def audit_span(entry: dict[str, Any]) -> tuple[float, float]:
    """An audit entry's call, monotonic (start, end), widened by the audit clock's resolution."""
    end = to_monotonic(entry["time"]) + 0.001  # the time is truncated to the millisecond
    return end - entry["elapsed_ms"] / 1000 - TOLERANCE_S, end + TOLERANCE_S


class PlantRecord:
    """One plant's own record of its devices (collected as the run goes) and the checks on it."""

    def __init__(self, violations: Violations, devices: Iterable[str] = SAFE, label: str = "") -> None:
        self.violations = violations
        self.label = label  # the node, in reports of a run with several
        self.history: dict[str, dict[str, list[tuple[float, Any]]]] = {
            d: {"outputs": [], "positions": []} for d in devices}
        self.started = 0.0  # moves before this are not checked
        self.reloads: list[tuple[float, float]] = []  # spans in which a reload may put outputs safe
        # device -> spans in which the daemon itself wrote a pending safe state (its <device>.safe events)
        self.late_safe: dict[str, list[tuple[float, float]]] = {}
        self.overheads: list[float] = []  # ms from the plant's position change to the client holding the result

    async def fetch(self, ws: ClientConnection) -> None:
        """The plant's record since what we hold (a device being rebuilt by a reload is skipped)."""
        for device, held in self.history.items():
            since = max((r[-1][0] for r in held.values() if r), default=0.0)  # first: the levels at start too
            try:
                got = await rpc(ws, "sim.timeline", {"device": device, "since": since})
            except RuntimeError:
                continue
            for kind in ("outputs", "positions"):
                held[kind].extend((t, v) for t, v in got[kind] if not held[kind] or t > held[kind][-1][0])

    def level_at(self, device: str, kind: str, at: float) -> Any:
        records = self.history[device][kind]
        i = bisect.bisect_right(records, (at, float("inf"))) - 1 if records else -1
        return records[i][1] if i >= 0 else None

    def during(self, device: str, kind: str, start: float, end: float) -> list[tuple[float, Any]]:
        records = self.history[device][kind]
        lo = bisect.bisect_right(records, (start, float("inf")))
        hi = bisect.bisect_right(records, (end, float("inf")))
        return records[lo:hi]

    def had(self, device: str, kind: str, value: Any, start: float, end: float) -> bool:
        """Whether the plant's *kind* of *device* was *value* at some moment of [start, end]."""
        return self.level_at(device, kind, start) == value or any(v == value for _, v in
                                                                  self.during(device, kind, start, end))

    def context(self, device: str, start: float, end: float) -> dict[str, Any]:
        """The plant's record around a call, relative to its start, for the report."""
        return {f"plant {kind} (s from the call's start)": [(round(t - start, 4), v) for t, v in
                                                             self.during(device, kind, start - 3, end + 1)]
                for kind in ("outputs", "positions")} | {"reloads (s from the call's start)": [
                    (round(a - start, 3), round(b - start, 3)) for a, b in self.reloads]} | (
                        {"node": self.label} if self.label else {})

    def check_confirmed(self, call: Call, result: dict[str, Any]) -> None:
        """The state a confirmed result names was the plant's at some moment of the call, and a
        "changed" result had the plant's output move to it during the call."""
        assert call.replied is not None
        want = SHOWN.get(result.get("state"))  # type: ignore[arg-type]
        if want is None:
            self.violations.add("inconsistent", {"unknown state": dataclasses.asdict(call)})
            return
        device, start, end = call.device, call.sent, call.replied
        if not self.had(device, "positions", want, start, end):
            self.violations.add("inconsistent", {"call": dataclasses.asdict(call),
                                                 **self.context(device, start, end)})
            return
        if result.get("changed"):
            # Something moved to it during the call: the output (the door's relay is energised to
            # open, a switch's output to be on), or the position (a feedback that was stuck and
            # came free while the output already stood there).
            positions = self.during(device, "positions", start, end)
            outputs = self.during(device, "outputs", start, end)
            if not any(v == want for _, v in [*outputs, *positions]):
                self.violations.add("inconsistent", {"changed, yet nothing moved": dataclasses.asdict(call),
                                                     **self.context(device, start, end)})
                return
            moved = [t for t, v in positions if v == want]
            if moved and device != "fan":  # the fan's coil has no travel: nothing to time
                self.overheads.append((end - moved[-1]) * 1000)

    def check_safe(self, call: Call, counts: dict[str, int], audited: dict[str, Any] | None = None) -> None:
        """After a -32002 the output is at its safe level: it was put there during the call, or it
        was there all along; or the error says plainly that nobody knows (a link cut mid-way).
        The call ends when the daemon answered (its audit entry, when there is one): the next
        action on the device may run before the reply reaches the client."""
        assert call.replied is not None and call.reply is not None
        device, safe = call.device, SAFE[call.device]
        end = audit_span(audited)[1] if audited is not None else call.replied
        writes = self.during(device, "outputs", call.sent, end)
        if any(v == safe for _, v in writes):
            return
        if self.had(device, "outputs", safe, end - 0.05, end):
            return  # safe as the call ended (the next queued action may already have moved it since)
        if not writes and self.level_at(device, "outputs", call.sent) == safe:
            return
        recovery = str(call.reply.get("error", {}).get("data", {}).get("recovery", ""))
        if "kept pending" in recovery:
            # The device did not answer (a Modbus unit gone silent; perhaps after taking the command,
            # its reply lost): the error says the output could not be made safe and that the safe
            # write is pending. Left unsafe, it must come back to safe later (the run ends with every
            # device answering again).
            counts["failures that said the output could not be made safe"] += 1
            after = self.during(device, "outputs", end, float("inf"))
            if self.level_at(device, "outputs", end) != safe and not any(v == safe for _, v in after):
                self.violations.add("pending safe write never written", {
                    "call": dataclasses.asdict(call), **self.context(device, call.sent, end)})
            return
        if OUTCOME_UNKNOWN in recovery:
            counts["outcome unknown (said so)"] = counts.get("outcome unknown (said so)", 0) + 1
            return
        self.violations.add("unsafe failure", {"call": dataclasses.asdict(call), **self.context(device, call.sent,
                                                                                                   call.replied)})

    async def watch_safe_writes(self, ws: ClientConnection) -> None:
        """Follow ``<device>.safe`` events: a pending safe state the daemon writes by itself when the
        bus is back moves an output with no call around it (the write precedes its event)."""
        await rpc(ws, "events.subscribe", {"topics": ["*.safe"]})
        async for frame in ws:
            event = json.loads(frame).get("params") or {}
            device = str(event.get("topic", "")).rpartition(".")[0]
            if (event.get("data") or {}).get("outcome") == "written_late":
                now = time.monotonic()
                self.late_safe.setdefault(device, []).append((now - 2.0, now))

    def check_moves(self, audit: list[dict[str, Any]]) -> None:
        """Every output change the plant recorded falls inside an audited action call on that
        device (or a reload, which closes a rebuilt device to safe, or the daemon writing a safe
        state that was pending)."""
        windows: dict[str, list[tuple[float, float]]] = {d: [] for d in self.history}
        named: dict[str, list[tuple[float, float, str]]] = {d: [] for d in self.history}  # for the report
        for entry in audit:
            device, _, _action = entry["method"].partition(".")
            if device not in windows or entry.get("token") is None or entry.get("role") is None:
                continue
            windows[device].append(audit_span(entry))
            named[device].append((*audit_span(entry), f"{entry['method']} {entry['outcome']} ({entry['token']})"))
        reloads = [(s - TOLERANCE_S, e + TOLERANCE_S) for s, e in self.reloads]
        for device, records in self.history.items():
            spans = sorted(windows[device] + reloads + self.late_safe.get(device, []))
            starts = [s for s, _ in spans]
            reach = list(itertools.accumulate((e for _, e in spans), max))  # furthest end so far
            for t, value in records["outputs"]:
                if t < self.started:
                    continue
                i = bisect.bisect_right(starts, t) - 1
                if i < 0 or reach[i] < t:
                    near = sorted(named[device], key=lambda n: abs(n[0] - t))[:4]
                    self.violations.add("unauthorised move", {
                        "device": device, "plant monotonic": t, "value": value, "soak s": round(t - self.started, 3),
                        "audited calls nearest (start, end: s from the move)": [
                            (round(a - t, 4), round(b - t, 4), what) for a, b, what in sorted(near)],
                        **({"node": self.label} if self.label else {})})
