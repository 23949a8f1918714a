"""Live state: one numbered stream of events, fanned out to subscribed connections.

Every event gets the next ``seq`` (daemon-wide, +1 per event) and is encoded
to its notification frame once, whatever the number of subscribers. Frames go
out with websockets' ``broadcast`` (synchronous, no task per subscriber), so
publishing never waits for a client. Each connection's unsent bytes are
bounded: a subscriber that falls further behind is cut off with close code
1013 and told to resume, rather than slowing anyone else or growing memory.

A bounded buffer of recent events lets a client that reconnects resume with
``since_seq`` (and the ``epoch`` of the daemon run it saw); when the gap is
no longer held, or the daemon restarted, it is told to resync from
``system.status``.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from websockets.asyncio.server import ServerConnection, broadcast

from controller.wire import jsonrpc
from controller.wire.clock import iso
from controller.wire.errors import InvalidParams, refuse_unknown_params
from controller.wire.owned import OwnedTasks
from drivers.base import Listeners

log = logging.getLogger(__name__)

CLOSE_TOO_SLOW = 1013  # "try again later": reconnect and resume with since_seq
MAX_PATTERNS = 64  # per connection
MAX_PATTERN_LENGTH = 128


@dataclass
class Subscription:
    """What one connection listens to."""

    ws: ServerConnection
    patterns: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    topic: str
    frame: bytes  # the notification, UTF-8, ready to send


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
        self.max_pending_bytes = max_pending_bytes
        self._on_cutoff = on_cutoff  # counts slow-subscriber cut-offs
        self._taps: Listeners[[dict[str, Any]]] = Listeners("events")  # bridges: every event object as published

    def tap(self, listener: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        """Give *listener* every event object as it is published (a bridge mirrors them); returns its
        unsubscribe. A listener that raises is logged and skipped: subscribers still get the event."""
        return self._taps.add(listener)

    def publish(self, topic: str, data: dict[str, Any]) -> int:
        """Give the event its seq, remember it, send it to every matching subscriber."""
        self.seq += 1
        event = {"topic": topic, "seq": self.seq, "time": iso(time.time()), "data": data}
        frame = jsonrpc.notification("event", event)
        self._taps.emit(event)
        self._recent.append(Event(self.seq, topic, frame))
        targets = self._routes.get(topic)
        if targets is None:
            targets = self._routes[topic] = [ws for ws, sub in self._subs.items() if _matches(sub.patterns, topic)]
        if targets:
            self._send(targets, frame)
        return self.seq

    def _send(self, targets: Iterable[ServerConnection], frame: bytes) -> None:
        ready = []
        for ws in targets:
            transport = ws.transport
            if transport is None or transport.is_closing():
                continue
            if transport.get_write_buffer_size() + len(frame) > self.max_pending_bytes:
                self._cut_off(ws)
            else:
                ready.append(ws)
        if ready:
            broadcast(ready, frame, text=True)

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
        replay = [e.frame for e in self._recent if e.seq > since and _matches(set(patterns), e.topic)]
        for frame in replay:
            self._send([ws], frame)
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
        """Forget a connection (closed or cut off)."""
        if self._subs.pop(ws, None) is not None:
            self._routes.clear()


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
