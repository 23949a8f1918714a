"""How a kind shows itself to the outside: small value types, no front door imported.

A kind describes its own Home Assistant entities, its MQTT state payloads and command words, and
what the wall panel draws (see :class:`controller.devices.base.Device`: ``ha_entities``,
``mqtt_state``, ``mqtt_messages``, ``mqtt_command``, ``panel``). The MQTT bridge, the panel and the
fleet read those descriptions; none of them names a kind.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

UNKNOWN = "None"  # Home Assistant's payload for "state unknown"
MAX_COMMAND_BYTES = 64  # a command is a word or a number; anything longer is malformed


# Units Home Assistant knows a sensor device_class for (used only when the unit says it plainly).
UNIT_CLASSES = {
    "°C": "temperature", "°F": "temperature", "K": "temperature",
    "Pa": "pressure", "hPa": "pressure", "kPa": "pressure", "bar": "pressure", "mbar": "pressure", "psi": "pressure",
    "V": "voltage", "mV": "voltage", "A": "current", "mA": "current", "W": "power", "kW": "power",
    "Wh": "energy", "kWh": "energy", "Hz": "frequency", "lx": "illuminance",
}
TOTAL_UNITS = frozenset({"Wh", "kWh"})  # meters that only count up: state_class total_increasing


@dataclass(frozen=True)
class HaEntity:
    """One Home Assistant entity announced for a device (MQTT discovery).

    The bridge adds what every entity has (the ``device`` block, ``origin``, ``availability``,
    ``qos``, ``name``, ``unique_id``) and turns each topic *leaf* into ``PREFIX/NODE/<device>/<leaf>``.
    A leaf named ``set`` or starting with ``set_`` carries commands (:func:`is_command_leaf`).
    """

    component: str  # Home Assistant platform: "cover", "switch", "lock", "number", "sensor", "binary_sensor", "event"
    fields: Mapping[str, Any]  # the platform's own keys: device_class, payload_*, state_*, min/max, unit...
    topics: Mapping[str, str] = field(default_factory=dict)  # discovery key -> topic leaf ("command_topic": "set")
    key: str = ""  # "" for the device's own entity; else an extra one named "<device> <key>"
    attributes: bool = True  # json_attributes_topic: the device's "attributes" leaf (the last outcome)


@dataclass(frozen=True)
class MqttMessage:
    """One message a device event becomes on the broker."""

    leaf: str  # PREFIX/NODE/<device>/<leaf>
    payload: str | bytes
    retain: bool


class BadCommand(ValueError):
    """A command payload this kind does not take (logged by the bridge; nothing moves)."""


def is_command_leaf(leaf: str) -> bool:
    """Commands arrive on ``set`` and ``set_*`` leaves: subscribed to, never retained."""
    return leaf == "set" or leaf.startswith("set_")


def number_payload(value: Any) -> str:
    """A finite number as its MQTT payload; anything else is Home Assistant's "unknown"."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return UNKNOWN
    return orjson.dumps(value).decode()


def parse_number(text: str) -> float | int:
    """A finite number from a command payload (integral values as int); BadCommand otherwise."""
    try:
        value = float(text)
    except ValueError:
        raise BadCommand("expected a number") from None
    if not math.isfinite(value):
        raise BadCommand("expected a finite number")
    return int(value) if value.is_integer() else value


def word_command(words: Mapping[str, str], kind: str, text: str) -> tuple[str, dict[str, Any]]:
    """A command word (any case) looked up in *words* (payload -> action)."""
    action = words.get(text.upper())
    if action is None:
        raise BadCommand(f"a {kind} takes {', '.join(words)}")
    return action, {}


def sensor_fields(unit: str) -> dict[str, Any]:
    """A Home Assistant sensor's unit, device_class and state_class, as far as its unit tells them."""
    fields: dict[str, Any] = {"state_class": "total_increasing" if unit in TOTAL_UNITS else "measurement"}
    if unit:
        fields["unit_of_measurement"] = unit
    if unit in UNIT_CLASSES:
        fields["device_class"] = UNIT_CLASSES[unit]
    return fields
