"""The registry of device kinds: one line per kind.

A kind module provides ``read_config(name, table, loader)`` returning its
config dataclass (a :class:`controller.settings.devices.DeviceConfig`) and
``build(config, wiring)`` returning its :class:`controller.devices.base.Device`.
Whoever loads a config passes :data:`REGISTRY` in
(:func:`controller.settings.load.loads`): settings never import the kinds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from controller.devices import cover, door, garage, input, lock, sensor, setpoint, switch
from controller.devices.base import Device
from controller.devices.wiring import Wiring
from controller.settings.devices import DeviceConfig, Loader
from controller.settings.reader import Table


@dataclass(frozen=True)
class Kind:
    read_config: Callable[[str, Table, Loader], DeviceConfig | None]
    build: Callable[[Any, Wiring], Device]  # takes the kind's own config class


REGISTRY: dict[str, Kind] = {
    "door": Kind(door.read_config, door.build),
    "switch": Kind(switch.read_config, switch.build),
    "setpoint": Kind(setpoint.read_config, setpoint.build),
    "sensor": Kind(sensor.read_config, sensor.build),
    "input": Kind(input.read_config, input.build),
    "lock": Kind(lock.read_config, lock.build),
    "garage": Kind(garage.read_config, garage.build),
    "cover": Kind(cover.read_config, cover.build),
}


def build(config: DeviceConfig, wiring: Wiring) -> Device:
    return REGISTRY[config.kind].build(config, wiring)
