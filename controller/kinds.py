"""The registry of device kinds: one line per kind.

A kind module provides ``read_config(name, table, loader)`` returning its
config dataclass, and ``build(config, wiring)`` returning its
:class:`controller.devices.Device`, with points made by :class:`Wiring`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from controller import door, sensor, setpoint, switch
from controller.config import DeviceConfig, GpioInputSpec, GpioOutputSpec, Loader, ModbusPointSpec
from controller.configbase import Table
from controller.devices import Device
from drivers.base import InputPoint, OutputPoint
from drivers.gpio import GpioBus
from drivers.modbus import ModbusLink
from drivers.serial_sensor import SerialSensor


@dataclass(frozen=True)
class Kind:
    read_config: Callable[[str, Table, Loader], DeviceConfig | None]
    build: Callable[[Any, Wiring], Device]


REGISTRY: dict[str, Kind] = {
    "door": Kind(door.read_config, door.build),
    "switch": Kind(switch.read_config, switch.build),
    "setpoint": Kind(setpoint.read_config, setpoint.build),
    "sensor": Kind(sensor.read_config, sensor.build),
}


class Wiring:
    """Turns point specs from the config into driver points on the right bus."""

    def __init__(self, gpio: GpioBus, modbus: dict[str, ModbusLink] | None = None,
                 buses: list[Any] | None = None) -> None:
        self.gpio = gpio
        self.modbus = modbus or {}  # link name -> ModbusLink
        self.buses = buses if buses is not None else []  # serial ports made here are appended

    def output(self, name: str, spec: Any, *, safe: Any, keep: bool = False) -> OutputPoint:
        """An output driven to *safe* as it is claimed, or (GPIO) left as found when *keep*."""
        if isinstance(spec, GpioOutputSpec):
            return self.gpio.output(name, spec.pin, active_high=spec.active_high, safe=bool(safe), keep=keep)
        if isinstance(spec, ModbusPointSpec):
            return self.modbus[spec.link].output(name, spec, safe=safe)
        raise TypeError(f"no driver for output spec {type(spec).__name__}")

    def input(self, name: str, spec: Any) -> InputPoint:
        if isinstance(spec, GpioInputSpec):
            return self.gpio.input(name, spec.pin, pull=spec.pull, active_high=spec.active_high,
                                   debounce_s=spec.debounce_s)
        if isinstance(spec, ModbusPointSpec):
            return self.modbus[spec.link].input(name, spec)
        raise TypeError(f"no driver for input spec {type(spec).__name__}")

    def serial_sensor(self, device: str, spec: Any) -> SerialSensor:
        port = SerialSensor(device, spec)
        self.buses.append(port)
        return port


def build(config: DeviceConfig, wiring: Wiring) -> Device:
    return REGISTRY[config.kind].build(config, wiring)
