"""Wiring: point specs from the config become driver points on the right running bus."""

from __future__ import annotations

from typing import Any, Protocol, cast

from drivers.base import Bus, InputPoint, OutputPoint, PointSpec, ReadingSource
from drivers.registry import SOURCE_DRIVERS


class PointBus(Bus, Protocol):
    """A bus that makes points from specs (GPIO, a Modbus link)."""

    def output(self, name: str, spec: Any, *, safe: Any, keep: bool = False) -> OutputPoint: ...

    def input(self, name: str, spec: Any) -> InputPoint: ...


class SourceBus(Bus, Protocol):
    """A shared bus that also carries sensors' sources (a Modbus link's meters)."""

    def source(self, device: str, spec: Any) -> ReadingSource: ...


class Wiring:
    """The running buses, by key; turns point specs into points on them.

    A bus made for one device (a serial sensor's port, a 1-Wire thermometer)
    is added to :attr:`buses` here; the daemon starts it and stops it with its
    device.
    """

    def __init__(self, buses: dict[str, PointBus]) -> None:
        self.point_buses = buses  # bus key -> the bus that makes points for specs naming it
        self.buses: list[Bus] = list(buses.values())  # every bus, in start order

    def _bus(self, spec: PointSpec) -> PointBus:
        bus = self.point_buses.get(spec.bus_key)
        if bus is None:
            raise LookupError(f"no running bus {spec.bus_key!r}")
        return bus

    def output(self, name: str, spec: PointSpec, *, safe: Any, keep: bool = False) -> OutputPoint:
        """An output driven to *safe* as it is claimed, or (GPIO) left as found when *keep*."""
        return self._bus(spec).output(name, spec, safe=safe, keep=keep)

    def input(self, name: str, spec: PointSpec) -> InputPoint:
        return self._bus(spec).input(name, spec)

    def source(self, device: str, spec: PointSpec) -> ReadingSource:
        """A sensor's readings, from the driver registered for its spec: a bus of the device's
        own (a serial port, a 1-Wire thermometer), or a source on a running shared link (a meter)."""
        driver = SOURCE_DRIVERS[spec.bus_kind]
        if driver.own_bus is not None:
            source = driver.own_bus(device, spec)
            self.buses.append(cast(Bus, source))
            return source
        bus = cast(SourceBus, self._bus(spec))
        return bus.source(device, spec)
