"""The fleet's picture of every node: pure state, fed by the aggregator, read by the panel.

:class:`FleetView` holds every node (online or not) and every device with its kind, online flag,
state and last update; changes are told to its listeners (``on_change``).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from controller.wire.clock import iso
from drivers.base import Listeners

log = logging.getLogger(__name__)

DEVICE_FIELDS = ("kind", "online", "state", "last_update")
EARLY_EVENTS = 256  # events held per node while its picture is being read (they may be newer than it)
EARLY_NODES = 64  # nodes whose early events are held at once (names come off the router: bounded)


@dataclass
class NodeView:
    """What the fleet knows about one node."""

    name: str
    online: bool = False
    session: int | None = None  # its WAMP session id while online
    last_update: float | None = None  # wall clock of the newest thing heard from it
    since: float | None = None  # when it went offline
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> status fields
    described: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> system.describe entry
    methods: tuple[str, ...] = ()  # what the router may call on it (its describe's "methods"): sim.* among them
    seq: int | None = None  # the last event seq seen (a gap: fetch system.status again)
    epoch: str | None = None

    def snapshot(self) -> dict[str, Any]:
        return {
            "online": self.online,
            "last_update": None if self.last_update is None else iso(self.last_update),
            "devices": {name: {k: d.get(k) for k in DEVICE_FIELDS} for name, d in self.devices.items()},
        }


class FleetView:
    """Every node and device; pure state, fed by the aggregator, read by the panel and fleet.status."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeView] = {}
        # Events of a node not yet online (its describe and status are being read): held, then applied
        # after its picture if newer than it, so a change made while the fleet reads a node is not lost.
        self._early: dict[str, deque[dict[str, Any]]] = {}
        self._listeners: Listeners[[str, str, dict[str, Any]]] = Listeners("fleet changes")  # (node, what, data)

    def on_change(self, listener: Callable[[str, str, dict[str, Any]], None]) -> Callable[[], None]:
        """Call *listener(node, what, data)* on every change (joined, left, event); returns its unsubscribe."""
        return self._listeners.add(listener)

    def snapshot(self) -> dict[str, Any]:
        return {"nodes": {name: node.snapshot() for name, node in sorted(self.nodes.items())}}

    def node(self, name: str) -> NodeView:
        view = self.nodes.get(name)
        if view is None:
            view = self.nodes[name] = NodeView(name)
        return view

    def _emit(self, node: str, what: str, data: dict[str, Any]) -> None:
        self._listeners.emit(node, what, data)

    def joined(self, name: str, session: int | None, described: dict[str, Any], status: dict[str, Any]) -> None:
        """A node's first (or fresh) picture: its describe and status results."""
        view = self.node(name)
        was_online = view.online
        view.online, view.session, view.since = True, session, None
        view.last_update = time.time()
        view.described = dict(described.get("devices") or {})
        view.methods = tuple(m for m in described.get("methods") or () if isinstance(m, str))
        view.devices = {d: dict(s) for d, s in (status.get("devices") or {}).items()}
        view.seq, view.epoch = status.get("seq"), status.get("epoch")
        self._emit(name, "joined", {"was_online": was_online})
        for event in self._early.pop(name, ()):
            self.event(name, event)  # those the picture already holds (seq <= its seq) are skipped

    def left(self, name: str, reason: str) -> None:
        view = self.nodes.get(name)
        if view is None or not view.online:
            return
        view.online, view.session = False, None
        self._early.pop(name, None)
        view.since = view.last_update = time.time()
        self._emit(name, "left", {"reason": reason})

    def event(self, name: str, event: dict[str, Any]) -> bool:
        """Apply one node event; False when it shows a gap (the caller refetches system.status)."""
        if not isinstance(event, dict):
            return True
        view = self.nodes.get(name)
        if view is None or not view.online:
            self._hold(name, event)
            return True
        seq = event.get("seq")
        in_order = not isinstance(seq, int) or view.seq is None or seq == view.seq + 1
        if isinstance(seq, int):
            if view.seq is not None and seq <= view.seq:
                return True  # already seen (the status fetch overtook it)
            view.seq = seq
        view.last_update = time.time()
        topic = str(event.get("topic", ""))
        data = event.get("data") if isinstance(event.get("data"), dict) else {}
        assert isinstance(data, dict)
        if topic == "system.status":
            device = view.devices.get(str(data.get("device")))
            if device is not None:
                device["online"] = bool(data.get("online"))
                for key in ("since", "reason"):
                    device.pop(key, None)
                    if key in data:
                        device[key] = data[key]
        else:
            device_name, _, what = topic.rpartition(".")
            device = view.devices.get(device_name)
            if device is not None and what in ("state", "reading"):
                device["state"] = {k: v for k, v in data.items() if k != "cause"}
                device["last_update"] = event.get("time")
        self._emit(name, "event", event)
        return in_order



    def _hold(self, name: str, event: dict[str, Any]) -> None:
        held = self._early.pop(name, None) or deque(maxlen=EARLY_EVENTS)
        held.append(event)
        self._early[name] = held  # the most recently heard from last
        while len(self._early) > EARLY_NODES:
            self._early.pop(next(iter(self._early)))
