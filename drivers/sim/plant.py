"""The simulated plant: what is wired to the far side of every bus, with faults.

The plant is built from linkages ("this output moves that input after a
delay"); it knows pins and levels, not doors. Whoever builds it (the daemon
under ``--simulate``, or a test) describes the wiring with :meth:`Plant.link`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from drivers.sim.gpio_world import Linkage, make_factory

log = logging.getLogger(__name__)


class UnknownFault(ValueError):
    """The device has no such fault in the simulation."""


@dataclass
class SimDevice:
    """One simulated device: its linkages and the faults it can suffer."""

    name: str
    linkages: dict[str, Linkage] = field(default_factory=dict)  # fault name -> linkage it stops
    active: set[str] = field(default_factory=set)  # faults currently injected


class Plant:
    """The far side of the buses for a whole configuration."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.gpio_factory = make_factory()  # hand this to the GPIO driver
        self.devices: dict[str, SimDevice] = {}

    def link(
        self,
        device: str,
        *,
        output_pin: int,
        energised: bool,
        input_pin: int,
        level_when_on: bool,
        delay_s: float,
        fault: str,
        initially_on: bool = False,
    ) -> Linkage:
        """Wire an output line to an input line: the input follows after *delay_s*.

        *fault* names the fault that makes the input stop following.
        """
        linkage = Linkage(
            loop=self.loop,
            output=self.gpio_factory.pin(output_pin),
            energised=energised,
            target=self.gpio_factory.pin(input_pin),
            level_when_on=level_when_on,
            delay_s=delay_s,
        )
        linkage.place(initially_on)
        self.devices.setdefault(device, SimDevice(device)).linkages[fault] = linkage
        return linkage

    def unlink(self, device: str) -> None:
        """Take a device's linkages out of the world (its config was reloaded away)."""
        sim = self.devices.pop(device, None)
        for linkage in sim.linkages.values() if sim else ():
            linkage.detach()

    def faults(self, device: str) -> list[str]:
        """Faults the device supports (empty when it is not simulated)."""
        sim = self.devices.get(device)
        return sorted(sim.linkages) if sim else []

    def active_faults(self, device: str) -> list[str]:
        sim = self.devices.get(device)
        return sorted(sim.active) if sim else []

    def inject(self, device: str, fault: str) -> None:
        sim = self.devices.get(device)
        if sim is None or fault not in sim.linkages:
            raise UnknownFault(f"{device} supports faults: {', '.join(self.faults(device)) or 'none'}")
        sim.linkages[fault].jam()
        sim.active.add(fault)
        log.info("simulated fault %s injected on %s", fault, device)

    def clear(self, device: str) -> None:
        sim = self.devices.get(device)
        if sim is None:
            raise UnknownFault(f"{device} is not simulated with faults")
        for fault in sim.active:
            sim.linkages[fault].free()
        sim.active.clear()
        log.info("simulated faults cleared on %s", device)

    def timeline(self, device: str, last: int = 20) -> list[float]:
        """Monotonic times (CLOCK_MONOTONIC, system-wide) at which the device's inputs last moved."""
        sim = self.devices.get(device)
        if sim is None:
            raise UnknownFault(f"{device} is not simulated with physics")
        return sorted(t for linkage in sim.linkages.values() for t in linkage.moved_at)[-last:]

    def move_by_hand(self, device: str, on: bool) -> None:
        """Someone moves the thing itself (pushes the door, flips the lamp's breaker)."""
        for linkage in self.devices[device].linkages.values():
            linkage.place(on)

    def stop(self) -> None:
        for sim in self.devices.values():
            for linkage in sim.linkages.values():
                linkage.jam()
