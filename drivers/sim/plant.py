"""The simulated plant: what is wired to the far side of every bus, with faults.

The plant is built from linkages ("this output moves that input after a
delay"), simulated Modbus servers and simulated serial sensors; it knows pins,
registers and lines, not doors. Whoever builds it (the daemon under
``--simulate``, or a test) describes the wiring with :meth:`Plant.link`,
:meth:`Plant.modbus_server` and :meth:`Plant.serial_sensor`, and names the
faults each device can suffer. Every fault has ``inject()`` and ``clear()``.

Servers and terminals are started and stopped on the event loop;
:meth:`Plant.aclose` leaves no socket, terminal, task or temp file behind.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from drivers.sim.gpio_world import Linkage, make_factory
from drivers.sim.modbus_world import SimModbusServer
from drivers.sim.onewire_world import CrcFault, MissingFault, SimThermometer, SimW1Bus
from drivers.sim.serial_world import SimSerialSensor, UnplugFault

log = logging.getLogger(__name__)


class UnknownFault(ValueError):
    """The device has no such fault in the simulation."""


class Fault(Protocol):
    """Something that can go wrong with a simulated device, and be put right."""

    def inject(self) -> None: ...

    def clear(self) -> None: ...


@dataclass
class JamFault:
    """The input of a linkage stops following its output."""

    linkage: Linkage

    def inject(self) -> None:
        self.linkage.jam()

    def clear(self) -> None:
        self.linkage.free()


class Machine(Protocol):
    """A far-side machine that several points of one device belong to (a strike, a motor)."""

    moved_at: deque[float]  # monotonic times its inputs moved

    def stop(self) -> None:
        """Freeze: no timer of its fires after this."""


@dataclass
class SimDevice:
    """One simulated device: its linkages and the faults it can suffer."""

    name: str
    linkages: dict[str, Linkage] = field(default_factory=dict)  # fault name -> linkage it stops
    undo: list[Callable[[], None]] = field(default_factory=list)  # other physics to take out with it
    faults: dict[str, Fault] = field(default_factory=dict)  # fault name -> what it does
    active: set[str] = field(default_factory=set)  # faults currently injected
    machines: list[Machine] = field(default_factory=list)  # machines of several points (drivers/sim/motion_world)



BOUNCE_S = 0.002  # a contact's chatter: one edge every 2 ms until it settles
HISTORY_LENGTH = 1000  # records kept per device and kind (outputs, positions): minutes of a busy soak


@dataclass
class History:
    """What one device's far side did, in the plant's own clock (CLOCK_MONOTONIC, system-wide):
    every change of an output (energised / written) and of the physical position."""

    outputs: deque[tuple[float, object]] = field(default_factory=lambda: deque(maxlen=HISTORY_LENGTH))
    positions: deque[tuple[float, object]] = field(default_factory=lambda: deque(maxlen=HISTORY_LENGTH))

    def add(self, kind: str, value: object) -> None:
        records = self.outputs if kind == "output" else self.positions
        if not records or records[-1][1] != value:  # changes only: a repeated level moved nothing
            records.append((time.monotonic(), value))


class Plant:
    """The far side of the buses for a whole configuration."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, time_scale: float = 1.0) -> None:
        self.loop = loop
        # Every simulated duration (travel, feedback, a sensor's line interval) is multiplied by this:
        # tests choose 0.1 and wait a tenth as long; the demo runs at 1.0, the timings README gives.
        self.time_scale = time_scale
        self.gpio_factory = make_factory()  # hand this to the GPIO driver
        self.devices: dict[str, SimDevice] = {}
        self.modbus: dict[str, SimModbusServer] = {}  # link name -> its simulated server
        self.serial: dict[str, SimSerialSensor] = {}  # device name -> its simulated terminal
        self._dir: str | None = None  # holds the serial symlinks
        self.histories: dict[str, History] = {}  # device name -> its record; survives a reload's relink
        self.w1: SimW1Bus | None = None  # the simulated /sys/bus/w1/devices, made with its first thermometer
        self.inputs: dict[str, list[Callable[[bool], None]]] = {}  # device -> its input lines' far-side levers

    def add_fault(self, device: str, name: str, fault: Fault) -> None:
        """Let *device* suffer *fault* under the name *name* (``sim.fault``)."""
        self.devices.setdefault(device, SimDevice(device)).faults[name] = fault

    async def modbus_server(self, link: str, *, rtu: bool = False) -> SimModbusServer:
        """A started Modbus server on 127.0.0.1 standing for *link* (one per link)."""
        server = self.modbus.get(link)
        if server is None:
            server = SimModbusServer(link, rtu=rtu)
            await server.start()
            self.modbus[link] = server
        return server

    def serial_sensor(self, device: str, line: Callable[[], bytes], period: float = 0.5) -> SimSerialSensor:
        """A plugged-in terminal emitting *line()* every *period* s, with an ``unplugged`` fault."""
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="pictl-sim-")
        sensor = SimSerialSensor(self.loop, os.path.join(self._dir, f"usb-pictl-sim-{device}"), line,
                                 period * self.time_scale)
        sensor.plug()
        self.serial[device] = sensor
        self.add_fault(device, "unplugged", UnplugFault(sensor))
        return sensor

    def onewire_thermometer(self, device: str, sensor_id: str) -> SimThermometer:
        """A DS18B20 on the simulated 1-Wire bus, with ``crc`` and ``missing`` faults."""
        if self.w1 is None:
            self.w1 = SimW1Bus(self.time_scale)
        sensor = self.w1.thermometer(device, sensor_id)
        self.add_fault(device, "crc", CrcFault(sensor))
        self.add_fault(device, "missing", MissingFault(sensor))
        w1 = self.w1
        self.on_unlink(device, lambda: w1.remove(device))
        return sensor

    def add_input(self, device: str, lever: Callable[[bool], None]) -> None:
        """*lever(active)* puts one of *device*'s input lines at its active or inactive level."""
        self.inputs.setdefault(device, []).append(lever)

        def forget() -> None:
            self.inputs.pop(device, None)

        self.on_unlink(device, forget)

    def set_input(self, device: str, active: bool, bounces: int = 0) -> None:
        """Put *device*'s input line at its active (or inactive) level, as a hand on a button or a
        window would; with *bounces*, the contact chatters that many times (every BOUNCE_S of the
        plant's time) before it settles."""
        levers = self.inputs.get(device, [])
        if len(levers) != 1:
            raise UnknownFault(f"{device} has {'no' if not levers else 'more than one'} simulated input line")
        (lever,) = levers
        if not bounces:
            lever(active)
            return
        for i in range(2 * bounces + 1):  # active, inactive, ... active: ends where it was asked to
            level = active if i % 2 == 0 else not active
            self.loop.call_later(i * BOUNCE_S * self.time_scale, lever, level)

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
            delay_s=delay_s * self.time_scale,
        )
        linkage.record = self.recorder(device)
        linkage.place(initially_on)
        self.devices.setdefault(device, SimDevice(device)).linkages[fault] = linkage
        self.add_fault(device, fault, JamFault(linkage))
        return linkage

    def add_machine(self, device: str, machine: Machine) -> None:
        """Put *machine* in the world as *device*'s far side; it is frozen when the device is
        unlinked or the plant stops."""
        sim = self.devices.setdefault(device, SimDevice(device))
        sim.machines.append(machine)
        sim.undo.append(machine.stop)

    def on_unlink(self, device: str, undo: Callable[[], None]) -> None:
        """Call *undo* when *device* is taken out of the world (physics other than linkages)."""
        self.devices.setdefault(device, SimDevice(device)).undo.append(undo)

    async def unlink(self, device: str) -> None:
        """Take a device's physics and terminal out of the world (its config was reloaded away)."""
        sim = self.devices.pop(device, None)
        for linkage in sim.linkages.values() if sim else ():
            linkage.detach()
        for undo in sim.undo if sim else ():
            undo()
        sensor = self.serial.pop(device, None)
        if sensor is not None:
            await sensor.aclose()

    def faults(self, device: str) -> list[str]:
        """Faults the device supports (empty when it is not simulated)."""
        sim = self.devices.get(device)
        return sorted(sim.faults) if sim else []

    def active_faults(self, device: str) -> list[str]:
        sim = self.devices.get(device)
        return sorted(sim.active) if sim else []

    def inject(self, device: str, fault: str) -> None:
        sim = self.devices.get(device)
        if sim is None or fault not in sim.faults:
            raise UnknownFault(f"{device} supports faults: {', '.join(self.faults(device)) or 'none'}")
        sim.faults[fault].inject()
        sim.active.add(fault)
        log.info("simulated fault %s injected on %s", fault, device)

    def clear(self, device: str) -> None:
        sim = self.devices.get(device)
        if sim is None:
            raise UnknownFault(f"{device} is not simulated with faults")
        for fault in sorted(sim.active):
            sim.faults[fault].clear()
        sim.active.clear()
        log.info("simulated faults cleared on %s", device)

    def timeline(self, device: str, last: int = 20) -> list[float]:
        """Monotonic times (CLOCK_MONOTONIC, system-wide) at which the device's inputs last moved."""
        sim = self.devices.get(device)
        if sim is None:
            raise UnknownFault(f"{device} is not simulated with physics")
        moves: list[Linkage | Machine] = [*sim.linkages.values(), *sim.machines]
        return sorted(t for moving in moves for t in moving.moved_at)[-last:]

    def recorder(self, device: str) -> Callable[[str, object], None]:
        """What a far side calls with ("output" or "position", value) when *device* changes."""
        history = self.histories.setdefault(device, History())
        return history.add

    def history(self, device: str, since: float = 0.0) -> dict[str, list[tuple[float, object]]]:
        """The device's output and position changes after *since* (monotonic), oldest first."""
        history = self.histories.get(device) or History()
        return {"outputs": [r for r in history.outputs if r[0] > since],
                "positions": [r for r in history.positions if r[0] > since]}

    def move_by_hand(self, device: str, on: bool) -> None:
        """Someone moves the thing itself (pushes the door, flips the lamp's breaker)."""
        for linkage in self.devices[device].linkages.values():
            linkage.place(on)

    def stop(self) -> None:
        """Freeze the GPIO world (no timer fires after this)."""
        for sim in self.devices.values():
            for linkage in sim.linkages.values():
                linkage.jam()
            for machine in sim.machines:
                machine.stop()

    async def aclose(self) -> None:
        """Stop everything: linkages, servers, terminals; remove the symlink directory."""
        self.stop()
        for sensor in self.serial.values():
            await sensor.aclose()
        for server in self.modbus.values():
            await server.aclose()
        if self.w1 is not None:
            await asyncio.to_thread(self.w1.close)  # joins its threads
            self.w1 = None
        self.serial.clear()
        self.modbus.clear()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
