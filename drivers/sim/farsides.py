"""The far side of every bus, by the driver that reads it: one line per bus.

A far side is what the simulated plant puts at the other end of a bus so that
the real driver runs unchanged (``pictl serve --simulate``, the tests and the
benchmarks). Each lives beside its world: :mod:`drivers.sim.gpio_world`,
:mod:`drivers.sim.modbus_world`, :mod:`drivers.sim.serial_world`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from drivers.base import Coupling, PointSpec
from drivers.sim.gpio_world import GpioFarSide
from drivers.sim.modbus_world import ModbusFarSide
from drivers.sim.serial_world import SerialFarSide

if TYPE_CHECKING:
    from drivers.sim.plant import Plant


class FarSide(Protocol):
    """The simulated other end of one kind of bus."""

    async def open_links(self, plant: Plant, links: dict[str, object]) -> dict[str, object]:
        """Start what the bus's links talk to; returns the link configs rewritten to reach it."""

    async def claim(self, plant: Plant, device: str, spec: PointSpec) -> PointSpec:
        """Put *device*'s point at the far side (addresses, a terminal, faults); returns the
        spec rewritten to reach it (or unchanged)."""

    def couple(self, plant: Plant, device: str, output: PointSpec, input: PointSpec, coupling: Coupling) -> bool:
        """Make *input* follow *output* as *coupling* says; False when this bus cannot."""


FAR_SIDES: dict[str, FarSide] = {
    "gpio": GpioFarSide(),
    "modbus": ModbusFarSide(),
    "serial": SerialFarSide(),
}
