"""The soak's 50 clients: each reconnects, acts, reads, pings, and (every fifth) follows events,
resuming with ``since_seq`` and ``epoch`` when it comes back."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import time
import uuid
from typing import Any, Protocol

from soak_base import IDS, TOKENS, Call, Gone, Violations
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

PANEL_ACTIONS = [("door", "open"), ("door", "close"), ("light", "on"), ("light", "off"), ("light", "toggle")]
ADMIN_ACTIONS = [*PANEL_ACTIONS, ("fan", "on"), ("fan", "off"), ("fan", "toggle"), ("hall_temp", "read")]


class Load(Protocol):
    """What the clients report to (the soak)."""

    url: str
    stop_at: float  # monotonic: no new step after this
    violations: Violations
    counts: dict[str, int]
    calls: list[Call]
    pings: list[float]


class Link:
    """One WebSocket connection: requests by id, events checked for gaps."""

    def __init__(self, soak: Load, client: Client, ws: ClientConnection) -> None:
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
        ident = next(IDS)
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

    def __init__(self, soak: Load, index: int) -> None:
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
                ws = await connect(self.soak.url, open_timeout=20, compression=None,
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
