"""What the MQTT bridge publishes, as pure functions: topics, discovery payloads, outcomes.

No broker and no MQTT client here. A device describes its own Home Assistant entities
(:meth:`controller.devices.base.Device.ha_entities`); this module adds what every entity shares
(the node's ``device`` block, ``origin``, the two-level availability, ``qos``, names and ids) and
turns topic leaves into topics, so every payload Home Assistant sees is tested without a broker.

Home Assistant facts this relies on: discovery topics are
``<prefix>/<component>/<node_id>/<object_id>/config``; an empty retained payload deletes the
entity; the ``event`` component takes ``{"event_type": ...}`` and ignores types missing from its
``event_types``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from controller.devices.outward import HaEntity, is_command_leaf
from controller.wire.protocol import ERROR_NAMES

ONLINE, OFFLINE = "online", "offline"
# The command event entity's types: "confirmed" or the JSON-RPC error name of a failed command.
EVENT_TYPES = ("confirmed", "not_confirmed", "busy", "unavailable", "unauthorized", "rate_limited",
               "invalid_params", "internal_error")


@dataclass(frozen=True)
class Topics:
    """Every topic of one node (``PREFIX/NODE/...``)."""

    prefix: str  # topic_prefix
    node: str  # the node's name

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.node}"

    @property
    def availability(self) -> str:
        """The node's own availability: retained, and the connection's last will."""
        return f"{self.base}/availability"

    @property
    def rpc(self) -> str:
        """MQTT 5 request/response: JSON-RPC in, the WebSocket's reply out."""
        return f"{self.base}/rpc"

    def commands(self, leaf: str) -> str:
        """The subscription that catches every device's command leaf *leaf* (``set``, ``set_position``)."""
        return f"{self.base}/+/{leaf}"

    def device(self, name: str, leaf: str) -> str:
        """``state``, ``set``, ``availability``, ``attributes``, ``event``... of device *name*."""
        return f"{self.base}/{name}/{leaf}"

    def event(self, topic: str) -> str:
        """Where an event (README, *Live state: events*: ``door.state``) is mirrored."""
        return f"{self.base}/events/{topic}"

    def command(self, topic: str) -> tuple[str, str] | None:
        """(device, leaf) of a command topic ``PREFIX/NODE/D/set[_*]``, or None when it is not one."""
        head = f"{self.base}/"
        if not topic.startswith(head):
            return None
        name, sep, leaf = topic[len(head):].partition("/")
        if not sep or not name or "/" in leaf or not is_command_leaf(leaf):
            return None
        return name, leaf


def command_leaves(entities: Iterable[HaEntity]) -> set[str]:
    """The command leaves the entities name (what the bridge subscribes to)."""
    return {leaf for entity in entities for leaf in entity.topics.values() if is_command_leaf(leaf)}


def discovery(discovery_prefix: str, topics: Topics, device: str, entities: list[HaEntity],
              version: str) -> list[tuple[str, dict[str, Any]]]:
    """The retained discovery messages for one device: (config topic, payload) pairs.

    One per entity the device describes, plus an ``event`` entity for a device that takes
    commands: Home Assistant has no error channel for MQTT commands, so a failed one shows there
    (and in the attributes), never as a state the device did not report.
    """
    node = topics.node
    device_block = {"identifiers": [f"pictl_{node}"], "name": node, "manufacturer": "pictl",
                    "model": "pictl hardware controller", "sw_version": version}
    common: dict[str, Any] = {
        "device": device_block,
        "origin": {"name": "pictl", "sw_version": version},
        "availability": [
            {"topic": topics.availability, "payload_available": ONLINE, "payload_not_available": OFFLINE},
            {"topic": topics.device(device, "availability"), "payload_available": ONLINE,
             "payload_not_available": OFFLINE},
        ],
        "availability_mode": "all",
        "qos": 1,
    }
    unique = f"pictl_{node}_{device}"
    out: list[tuple[str, dict[str, Any]]] = []
    for entity in entities:
        object_id = f"{device}_{entity.key}" if entity.key else device
        payload = {**common,
                   **({"json_attributes_topic": topics.device(device, "attributes")} if entity.attributes else {}),
                   **{key: topics.device(device, leaf) for key, leaf in entity.topics.items()},
                   "name": f"{device} {entity.key}" if entity.key else device,
                   "unique_id": f"{unique}_{entity.key}" if entity.key else unique,
                   **entity.fields}
        out.append((f"{discovery_prefix}/{entity.component}/{node}/{object_id}/config", payload))
    if command_leaves(entities):
        out.append((f"{discovery_prefix}/event/{node}/{device}_command/config", {
            **common, "name": f"{device} command", "unique_id": f"{unique}_command",
            "state_topic": topics.device(device, "event"), "event_types": list(EVENT_TYPES),
        }))
    return out


def outcome(action: str, reply: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """An action's JSON-RPC reply as (``.../attributes`` payload, ``.../event`` payload)."""
    error = reply.get("error")
    if error is None:
        result = reply.get("result") or {}
        attributes = {"action": action, "confirmed": bool(result.get("confirmed")), "changed": result.get("changed"),
                      "elapsed_ms": result.get("elapsed_ms"), "evidence": result.get("evidence"), "error": None}
        return attributes, {"event_type": "confirmed", "action": action}
    data = error.get("data") or {}
    attributes = {"action": action, "confirmed": False, "changed": None, "elapsed_ms": data.get("elapsed_ms"),
                  "evidence": data.get("evidence"), "error": error}
    code = error.get("code")
    name = ERROR_NAMES.get(code, "internal_error") if isinstance(code, int) else "internal_error"
    return attributes, {"event_type": name if name in EVENT_TYPES else "internal_error", "action": action,
                        "code": code}
