"""What the MQTT bridge publishes, as pure functions: topics, payloads, Home Assistant discovery.

No broker and no MQTT client here: these turn a device's description, its state
object or an action's JSON-RPC reply into topic names and payloads (README, *Home Assistant and MQTT*),
so every payload Home Assistant sees is tested without a broker.

Home Assistant facts this relies on: discovery topics are
``<prefix>/<component>/<node_id>/<object_id>/config``; an empty retained payload
deletes the entity; the payload ``None`` on a state topic means unknown; a cover's
states are ``open``/``opening``/``closed``/``closing``; the ``event`` component takes
``{"event_type": ...}`` and ignores types missing from its ``event_types``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson

from controller.wire.protocol import ERROR_NAMES

UNKNOWN = "None"  # Home Assistant's payload for "state unknown"
ONLINE, OFFLINE = "online", "offline"
# The event entity's types: "confirmed" or the JSON-RPC error name of a failed command.
EVENT_TYPES = ("confirmed", "not_confirmed", "busy", "unavailable", "unauthorized", "rate_limited",
               "invalid_params", "internal_error")
DOOR_COMMANDS = {"OPEN": "open", "CLOSE": "close"}
SWITCH_COMMANDS = {"ON": "on", "OFF": "off", "TOGGLE": "toggle"}
MAX_COMMAND_BYTES = 64  # a command is a word or a number; anything longer is malformed
# Sensor units Home Assistant knows a device_class for (used only when the unit says it plainly).
UNIT_CLASSES = {
    "°C": "temperature", "°F": "temperature", "K": "temperature",
    "Pa": "pressure", "hPa": "pressure", "kPa": "pressure", "bar": "pressure", "mbar": "pressure", "psi": "pressure",
    "V": "voltage", "mV": "voltage", "A": "current", "mA": "current", "W": "power", "kW": "power",
    "Wh": "energy", "kWh": "energy", "Hz": "frequency", "lx": "illuminance",
}
TOTAL_UNITS = frozenset({"Wh", "kWh"})  # meters that only count up: state_class total_increasing


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

    @property
    def commands(self) -> str:
        """The subscription that catches every device's ``set`` topic."""
        return f"{self.base}/+/set"

    def device(self, name: str, leaf: str) -> str:
        """``state``, ``set``, ``availability``, ``attributes`` or ``event`` of device *name*."""
        return f"{self.base}/{name}/{leaf}"

    def event(self, topic: str) -> str:
        """Where an event (README, *Live state: events*: ``door.state``) is mirrored."""
        return f"{self.base}/events/{topic}"

    def commanded_device(self, topic: str) -> str | None:
        """The device a ``.../D/set`` topic names, or None when it is not one of ours."""
        head = f"{self.base}/"
        if not topic.startswith(head) or not topic.endswith("/set"):
            return None
        name = topic[len(head):-len("/set")]
        return name if name and "/" not in name else None


@dataclass(frozen=True)
class Entity:
    """What discovery needs to know about one device."""

    name: str  # the device's name
    kind: str  # door, switch, setpoint, sensor
    unit: str = ""  # a setpoint's unit
    minimum: float | None = None  # a setpoint's range
    maximum: float | None = None
    step: float | None = None  # a setpoint's resolution
    values: tuple[tuple[str, str], ...] = ()  # a sensor's named values and their units, in config order


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def discovery(discovery_prefix: str, topics: Topics, entity: Entity, version: str) -> list[tuple[str, dict[str, Any]]]:
    """The retained discovery messages for *entity*: (config topic, payload) pairs.

    One entity per device (one per value for a sensor with several), plus an
    ``event`` entity for each device that takes commands: Home Assistant has no
    error channel for MQTT commands, so a failed one shows there (and in the
    attributes), never as a state the contact did not report.
    """
    node = topics.node
    device_block = {"identifiers": [f"pictl_{node}"], "name": node, "manufacturer": "pictl",
                    "model": "pictl hardware controller", "sw_version": version}
    common: dict[str, Any] = {
        "device": device_block,
        "origin": {"name": "pictl", "sw_version": version},
        "availability": [
            {"topic": topics.availability, "payload_available": ONLINE, "payload_not_available": OFFLINE},
            {"topic": topics.device(entity.name, "availability"), "payload_available": ONLINE,
             "payload_not_available": OFFLINE},
        ],
        "availability_mode": "all",
        "json_attributes_topic": topics.device(entity.name, "attributes"),
        "state_topic": topics.device(entity.name, "state"),
        "qos": 1,
    }
    unique = f"pictl_{node}_{entity.name}"
    out: list[tuple[str, dict[str, Any]]] = []

    def add(component: str, object_id: str, payload: dict[str, Any]) -> None:
        out.append((f"{discovery_prefix}/{component}/{node}/{object_id}/config", payload))

    command = topics.device(entity.name, "set")
    if entity.kind == "door":
        add("cover", entity.name, {
            **common, "name": entity.name, "unique_id": unique, "device_class": "door",
            "command_topic": command, "payload_open": "OPEN", "payload_close": "CLOSE", "payload_stop": None,
            "state_open": "open", "state_opening": "opening", "state_closed": "closed", "state_closing": "closing",
            "optimistic": False, "retain": False,
        })
    elif entity.kind == "switch":
        add("switch", entity.name, {
            **common, "name": entity.name, "unique_id": unique, "command_topic": command,
            "payload_on": "ON", "payload_off": "OFF", "state_on": "ON", "state_off": "OFF",
            "optimistic": False, "retain": False,
        })
    elif entity.kind == "setpoint":
        number: dict[str, Any] = {**common, "name": entity.name, "unique_id": unique, "command_topic": command,
                                  "optimistic": False, "retain": False, "mode": "box"}
        if entity.minimum is not None:
            number["min"] = _number(entity.minimum)
        if entity.maximum is not None:
            number["max"] = _number(entity.maximum)
        if entity.step:
            number["step"] = _number(entity.step)
        if entity.unit:
            number["unit_of_measurement"] = entity.unit
        add("number", entity.name, number)
    elif entity.kind == "sensor":
        several = len(entity.values) > 1
        for value_name, unit in entity.values or (("value", ""),):
            sensor: dict[str, Any] = {**common, "name": f"{entity.name} {value_name}" if several else entity.name,
                                      "unique_id": f"{unique}_{value_name}" if several else unique,
                                      "state_class": "total_increasing" if unit in TOTAL_UNITS else "measurement"}
            if several:
                sensor["value_template"] = f"{{{{ value_json.{value_name} }}}}"
            if unit:
                sensor["unit_of_measurement"] = unit
            if unit in UNIT_CLASSES:
                sensor["device_class"] = UNIT_CLASSES[unit]
            add("sensor", f"{entity.name}_{value_name}" if several else entity.name, sensor)
        return out  # a sensor takes no commands: no event entity
    else:
        return out  # a kind this bridge does not know: nothing announced
    add("event", f"{entity.name}_command", {
        **{k: v for k, v in common.items() if k not in ("state_topic", "json_attributes_topic")},
        "name": f"{entity.name} command", "unique_id": f"{unique}_command",
        "state_topic": topics.device(entity.name, "event"), "event_types": list(EVENT_TYPES),
    })
    return out


def state_payload(kind: str, state: dict[str, Any]) -> str:
    """A state object (``device.state()`` or a sensor reading) as its ``.../state`` payload."""
    if kind == "door":
        shown = state.get("state")
        if shown == "moving":  # commanded, not yet observed: the actuator says which way
            return "opening" if state.get("actuator") else "closing"
        return shown if shown in ("open", "closed") else UNKNOWN
    if kind == "switch":
        return {"on": "ON", "off": "OFF"}.get(state.get("state", ""), UNKNOWN)
    if "values" in state:  # a sensor with several named values: one JSON object
        return orjson.dumps(state["values"]).decode()
    value = state.get("value")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return UNKNOWN
    return orjson.dumps(value).decode()


class BadCommand(ValueError):
    """A ``set`` payload that is not a command this kind takes."""


def command(kind: str, payload: bytes) -> tuple[str, dict[str, Any]]:
    """The action and params a ``.../set`` payload asks for; BadCommand when it is malformed."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise BadCommand(f"{len(payload)} bytes: a command is a word or a number")
    try:
        text = payload.decode("ascii").strip()
    except UnicodeDecodeError:
        raise BadCommand("not ASCII text") from None
    if kind == "door":
        action = DOOR_COMMANDS.get(text.upper())
        if action is None:
            raise BadCommand(f"a door takes {' or '.join(DOOR_COMMANDS)}")
        return action, {}
    if kind == "switch":
        action = SWITCH_COMMANDS.get(text.upper())
        if action is None:
            raise BadCommand(f"a switch takes {', '.join(SWITCH_COMMANDS)}")
        return action, {}
    if kind == "setpoint":
        try:
            value = float(text)
        except ValueError:
            raise BadCommand("a setpoint takes a number") from None
        if not math.isfinite(value):
            raise BadCommand("a setpoint takes a finite number")
        return "set", {"value": _number(value)}
    raise BadCommand(f"a {kind} takes no commands")


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
