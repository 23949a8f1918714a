"""Live state: one numbered stream of events, fanned out to subscribed connections.

Every event gets the next ``seq`` (daemon-wide, +1 per event) and is encoded
once, whatever the number of subscribers: to its notification, and to the
WebSocket frame that carries it (unmasked, uncompressed: the same bytes for
every connection). Publishing only queues that frame on each subscriber's
outbox; the outboxes are written from the event loop a few dozen connections
at a time, each as one write of everything it has pending. So a publish never
waits for a client, a fan-out to thousands never holds the replies that are
ready meanwhile, and under load several events go out in one write. Each
connection gets its frames in seq order, and a reply to it first writes what
its outbox holds (:meth:`EventBus.flush`): replayed events precede the reply
to ``events.subscribe``, and an event published before a reply arrives first.

Each connection's unsent bytes are bounded: a subscriber that falls further
behind is cut off with close code 1013 and told to resume, rather than
slowing anyone else or growing memory.

A bounded buffer of recent events lets a client that reconnects resume with
``since_seq`` (and the ``epoch`` of the daemon run it saw); when the gap is
no longer held, or the daemon restarted, it is told to resync from
``system.status``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from controller.wire import jsonrpc
from controller.wire.clock import iso
from controller.wire.errors import InvalidParams, refuse_unknown_params
from controller.wire.owned import OwnedTasks
from drivers.base import Listeners

log = logging.getLogger(__name__)

CLOSE_TOO_SLOW = 1013  # "try again later": reconnect and resume with since_seq
MAX_PATTERNS = 64  # per connection
MAX_PATTERN_LENGTH = 128
WRITES_PER_TURN = 16  # connections written per turn of the event loop: what a reply may wait behind
# A batch starts at most this long per connection after the last one started (10 ms after a batch
# to 1,000): under a stream of events each connection gets one write of several, not one per event.
BATCH_SPACING_S = 10e-6


@dataclass
class Subscription:
    """What one connection listens to."""

    ws: ServerConnection
    patterns: set[str] = field(default_factory=set)


Pending = bytes | list[bytes]  # what one connection has queued: a frame, or several in order


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    topic: str
    wire: bytes  # the WebSocket text frame carrying the notification, as written to every connection


class EventBus:
    """Numbers, buffers and fans out events."""

    def __init__(self, *, buffer_size: int = 1000, max_pending_bytes: int = 256 * 1024,
                 on_cutoff: Callable[[], None] | None = None) -> None:
        self.epoch = secrets.token_hex(8)  # identifies this daemon run: seq restarts with it
        self.seq = 0  # the last seq given out
        self.cutoffs = 0  # subscribers cut off for falling behind
        self._closing = OwnedTasks("closing a slow subscriber")  # close handshakes of cut-off subscribers
        self._recent: deque[Event] = deque(maxlen=buffer_size)  # for since_seq resumes
        self._subs: dict[ServerConnection, Subscription] = {}
        self._routes: dict[str, list[ServerConnection]] = {}  # topic -> subscribers, rebuilt on change
        # Frames not yet written, per connection: one frame as it is, several in a list (one frame
        # is the common case, and bytes are no work for the cyclic collector: 1,000 lists a batch were).
        self._outbox: dict[ServerConnection, Pending] = {}
        self._writing: dict[ServerConnection, Pending] = {}  # the batch being written, turn by turn
        self._order: list[ServerConnection] = []  # the batch's connections, in the order they are written
        self._scheduled = False  # a turn of writing is due on the loop
        self._next_batch = 0.0  # loop time before which no new batch starts
        self.max_pending_bytes = max_pending_bytes
        self._on_cutoff = on_cutoff  # counts slow-subscriber cut-offs
        self._taps: Listeners[[dict[str, Any]]] = Listeners("events")  # bridges: every event object as published

    def tap(self, listener: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        """Give *listener* every event object as it is published (a bridge mirrors them); returns its
        unsubscribe. A listener that raises is logged and skipped: subscribers still get the event."""
        return self._taps.add(listener)

    def publish(self, topic: str, data: dict[str, Any]) -> int:
        """Give the event its seq, remember it, queue it for every matching subscriber."""
        self.seq += 1
        event = {"topic": topic, "seq": self.seq, "time": iso(time.time()), "data": data}
        wire = Frame(Opcode.TEXT, jsonrpc.notification("event", event)).serialize(mask=False, extensions=[])
        self._taps.emit(event)
        self._recent.append(Event(self.seq, topic, wire))
        targets = self._routes.get(topic)
        if targets is None:
            targets = self._routes[topic] = [ws for ws, sub in self._subs.items() if _matches(sub.patterns, topic)]
        if targets:
            self._queue(targets, wire)
        return self.seq

    def _queue(self, targets: Iterable[ServerConnection], wire: bytes) -> None:
        outbox = self._outbox
        for ws in targets:
            pending = outbox.get(ws)
            if pending is None:
                outbox[ws] = wire
            elif isinstance(pending, list):
                pending.append(wire)
            else:
                outbox[ws] = [pending, wire]
        if not self._scheduled:
            self._scheduled = True
            loop = asyncio.get_running_loop()
            wait = self._next_batch - loop.time()
            if wait > 0:
                loop.call_later(wait, self._write_turn)
            else:
                loop.call_soon(self._write_turn)

    def _write_turn(self) -> None:
        """Write a few connections' pending frames, then let the loop run what else is ready (a
        reply, a frame just read) before the next few. A batch is every connection with frames
        pending when it starts; what is published meanwhile goes out with the next one."""
        loop = asyncio.get_running_loop()
        if not self._order:
            self._writing, self._outbox = self._outbox, {}
            self._order = list(self._writing)
            self._next_batch = loop.time() + BATCH_SPACING_S * len(self._order)
        order, batch = self._order, self._writing
        for ws in order[-WRITES_PER_TURN:]:
            frames = batch.pop(ws, None)
            if frames is not None:
                self._write(ws, frames)
        del order[-WRITES_PER_TURN:]
        if order:
            loop.call_soon(self._write_turn)
        elif self._outbox:
            loop.call_at(self._next_batch, self._write_turn)
        else:
            self._scheduled = False

    def _write(self, ws: ServerConnection, frames: Pending) -> None:
        transport = ws.transport
        if transport is None or transport.is_closing() or ws.protocol.state is not State.OPEN:
            return
        data = frames if isinstance(frames, bytes) else b"".join(frames)
        if transport.get_write_buffer_size() + len(data) > self.max_pending_bytes:
            self._cut_off(ws)
        else:
            transport.write(data)  # whole frames, never interleaved with the library's own

    def unsent(self) -> int:
        """Connections with frames queued and not yet written."""
        return len(self._outbox.keys() | self._writing.keys())

    def flush(self, ws: ServerConnection) -> None:
        """Write what *ws* has pending now, before anything else is sent on it (a reply)."""
        first, later = self._writing.pop(ws, None), self._outbox.pop(ws, None)
        pending = later if first is None else first if later is None else [*_frames(first), *_frames(later)]
        if pending is not None:
            self._write(ws, pending)

    def _cut_off(self, ws: ServerConnection) -> None:
        log.warning("closing a subscriber that fell %d bytes behind", ws.transport.get_write_buffer_size())
        self.drop(ws)
        self.cutoffs += 1
        if self._on_cutoff is not None:
            self._on_cutoff()
        self._closing.spawn(ws.close(CLOSE_TOO_SLOW, "event queue overflow: reconnect and resume with since_seq"))

    # -- subscriptions --------------------------------------------------------------------------
    def subscribe(self, ws: ServerConnection, params: dict[str, Any]) -> dict[str, Any]:
        """``events.subscribe``: add patterns; replay from ``since_seq`` when asked.

        Replayed events are written to the connection before this returns, so
        they precede both the reply and any later event.
        """
        patterns = _patterns("events.subscribe", params, allowed=("topics", "since_seq", "epoch"))
        since = params.get("since_seq")
        epoch = params.get("epoch")
        if since is not None and (isinstance(since, bool) or not isinstance(since, int) or since < 0):
            raise InvalidParams("since_seq must be a non-negative integer", param="since_seq")
        if epoch is not None and not isinstance(epoch, str):
            raise InvalidParams("epoch must be a string", param="epoch")
        sub = self._subs.setdefault(ws, Subscription(ws))
        if len(sub.patterns | set(patterns)) > MAX_PATTERNS:
            raise InvalidParams(f"at most {MAX_PATTERNS} patterns per connection", param="topics")
        sub.patterns.update(patterns)
        self._routes.clear()
        result: dict[str, Any] = {"subscribed": sorted(sub.patterns), "seq": self.seq, "epoch": self.epoch}
        if since is None:
            return result
        oldest = self._recent[0].seq if self._recent else self.seq + 1
        if (epoch is not None and epoch != self.epoch) or since > self.seq or since + 1 < oldest:
            result["resync"] = True  # the gap is not held: read system.status, then go on from "seq"
            return result
        replay = [e.wire for e in self._recent if e.seq > since and _matches(set(patterns), e.topic)]
        for wire in replay:
            self._queue([ws], wire)  # written before the reply (the server flushes first)
        result["replayed"] = len(replay)
        return result

    def unsubscribe(self, ws: ServerConnection, params: dict[str, Any]) -> dict[str, Any]:
        patterns = _patterns("events.unsubscribe", params, allowed=("topics",))
        sub = self._subs.get(ws)
        removed = sorted(set(patterns) & sub.patterns) if sub else []
        if sub:
            sub.patterns.difference_update(patterns)
            self._routes.clear()
        return {"unsubscribed": removed}

    def drop(self, ws: ServerConnection) -> None:
        """Forget a connection (closed or cut off), and what it had pending."""
        self._outbox.pop(ws, None)
        self._writing.pop(ws, None)
        if self._subs.pop(ws, None) is not None:
            self._routes.clear()


def _frames(pending: Pending) -> list[bytes]:
    return [pending] if isinstance(pending, bytes) else pending


def _matches(patterns: set[str], topic: str) -> bool:
    return any(fnmatchcase(topic, p) for p in patterns)


def _patterns(where: str, params: dict[str, Any], allowed: tuple[str, ...]) -> list[str]:
    refuse_unknown_params(where, params, allowed)
    topics = params.get("topics")
    if (
        not isinstance(topics, list)
        or not topics
        or len(topics) > MAX_PATTERNS
        or not all(isinstance(t, str) and 0 < len(t) <= MAX_PATTERN_LENGTH for t in topics)
    ):
        raise InvalidParams(
            f'topics must be a list of 1-{MAX_PATTERNS} shell-style patterns like "door.*" '
            f"(each at most {MAX_PATTERN_LENGTH} characters)",
            param="topics",
        )
    return topics
