"""The far side of every bus, by the driver that reads it: one line per bus.

A far side is what the simulated plant puts at the other end of a bus so that
the real driver runs unchanged (``pictl serve --simulate``, the tests and the
benchmarks). Each adapts its world (:mod:`drivers.sim.gpio_world`,
:mod:`drivers.sim.modbus_world` and :mod:`drivers.sim.meter_world`,
:mod:`drivers.sim.serial_world`, :mod:`drivers.sim.onewire_world`) to the plant.
An input line a far side claims can be moved by hand (:meth:`Plant.set_input`, ``sim.input``).
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from drivers.base import Coupling, Mechanism, PointSpec
from drivers.gpio import GpioInputSpec, GpioOutputSpec
from drivers.modbus_spec import ModbusLinkConfig, ModbusPointSpec, ModbusSensorSpec
from drivers.onewire import OneWireSpec
from drivers.serial_sensor import SerialSensorSpec
from drivers.sim.meter_world import attach_meter
from drivers.sim.modbus_world import SilenceFault, follow, record_writes
from drivers.sim.motion_world import Wire, build_machine
from drivers.sim.plant import Plant
from drivers.sim.serial_world import SENSOR_PERIOD_S, sensor_lines


class FarSide(Protocol):
    """The simulated other end of one kind of bus."""

    async def open_links(self, plant: Plant, links: dict[str, object]) -> dict[str, object]:
        """Start what the bus's links talk to; returns the link configs rewritten to reach it."""

    async def claim(self, plant: Plant, device: str, spec: PointSpec) -> PointSpec:
        """Put *device*'s point at the far side (addresses, a terminal, faults); returns the
        spec rewritten to reach it (or unchanged)."""

    def couple(self, plant: Plant, device: str, output: PointSpec, input: PointSpec, coupling: Coupling) -> bool:
        """Make *input* follow *output* as *coupling* says; False when this bus cannot."""


class GpioFarSide:
    """The far side of the GPIO bus: the plant's mock pins, linked by each kind's couplings, and
    the machines of :mod:`drivers.sim.motion_world` for kinds that declare a Mechanism.

    (A far side *may* have ``machine(plant, device, specs, mechanism) -> bool``; the others have no
    machines.)"""

    async def open_links(self, plant: Plant, links: dict[str, object]) -> dict[str, object]:
        return dict(links)  # one factory for the whole board: nothing per link

    async def claim(self, plant: Plant, device: str, spec: PointSpec) -> PointSpec:
        """Nothing to rewrite: the driver reaches the plant through its pin factory. An input line
        gets a lever for ``sim.input`` (which any linkage made later may move again)."""
        if isinstance(spec, GpioInputSpec):
            pin, active_level = plant.gpio_factory.pin(spec.pin), spec.active_level
            plant.add_input(device, lambda active: pin.hold(active_level if active else not active_level))
        return spec

    def couple(self, plant: Plant, device: str, output: PointSpec, input: PointSpec, coupling: Coupling) -> bool:
        if not isinstance(output, GpioOutputSpec) or not isinstance(input, GpioInputSpec):
            return False
        on_level = input.active_level if coupling.active_when_on else not input.active_level
        plant.link(device, output_pin=output.pin, energised=output.active_high, input_pin=input.pin,
                   level_when_on=on_level, delay_s=coupling.delay_s, fault=coupling.fault)
        return True

    def machine(self, plant: Plant, device: str, specs: dict[str, PointSpec], mechanism: Mechanism) -> bool:
        """Build *mechanism*'s machine on the mock pins of *specs* (role -> spec); False when a point
        is not a GPIO line."""
        wires: dict[str, Wire] = {}
        for role, spec in specs.items():
            if isinstance(spec, GpioOutputSpec):
                wires[role] = Wire(spec.pin, spec.active_high)
            elif isinstance(spec, GpioInputSpec):
                wires[role] = Wire(spec.pin, spec.active_level)
            else:
                return False
        names = {role: field for role, field in mechanism.points if role in wires}
        build_machine(plant, device, mechanism.model, wires, names, dict(mechanism.settings))
        return True


class ModbusFarSide:
    """The far side of Modbus links: one server per link, the addresses the points use, an
    ``offline`` fault per device, and verify addresses that follow what is written."""

    async def open_links(self, plant: Plant, links: dict[str, object]) -> dict[str, object]:
        """A started server per link, and each link's config rewritten to reach it."""
        out: dict[str, object] = {}
        for name, link in links.items():
            assert isinstance(link, ModbusLinkConfig)
            server = await plant.modbus_server(name, rtu=link.transport == "rtu")
            out[name] = dataclasses.replace(link, host="127.0.0.1", port=server.port) if link.transport == "tcp" \
                else dataclasses.replace(link, port=server.url)
        return out

    async def claim(self, plant: Plant, device: str, spec: PointSpec) -> PointSpec:
        if isinstance(spec, ModbusSensorSpec):  # a meter: registers that drift, and its own outage
            meters = plant.modbus[spec.link].devices
            plant.on_unlink(device, attach_meter(meters, spec, plant.time_scale)[1])
            plant.add_fault(device, "offline", SilenceFault(meters, spec.device_id))
            return spec
        assert isinstance(spec, ModbusPointSpec)
        sim = plant.modbus[spec.link].devices
        for at in (spec.at, spec.verify):
            if at is not None:
                sim.map(at.device_id, at.table, at.address, at.width)
        if "offline" not in plant.faults(device):
            plant.add_fault(device, "offline", SilenceFault(sim, spec.at.device_id))
        plant.on_unlink(device, record_writes(sim, spec.at, plant.recorder(device)))
        if spec.at.table == "discrete":  # an input line: a lever for sim.input
            at = spec.at
            plant.add_input(device, lambda active: sim.set(at.device_id, at.table, at.address, int(active)))
        verify = spec.verify
        if verify is not None:  # a status input or actual value that follows the written one
            if spec.at.table == "coil":
                on, off = spec.verify_on, spec.verify_off
                plant.on_unlink(device, follow(sim, spec.at, verify, lambda value: on if value else off))
            else:
                plant.on_unlink(device, follow(sim, spec.at, verify, lambda value: value))
        return spec

    def couple(self, plant: Plant, device: str, output: PointSpec, input: PointSpec, coupling: Coupling) -> bool:
        """An input on the same link follows its output at once (no travel time on Modbus)."""
        if not isinstance(output, ModbusPointSpec) or not isinstance(input, ModbusPointSpec) \
                or output.link != input.link:
            return False
        sim = plant.modbus[output.link].devices
        active = coupling.active_when_on
        plant.on_unlink(device, follow(sim, output.at, input.at, lambda on: int(bool(on) == active)))
        return True


class SerialFarSide:
    """The far side of a serial sensor: a terminal emitting lines its pattern takes."""

    async def open_links(self, plant: Plant, links: dict[str, object]) -> dict[str, object]:
        return dict(links)  # a serial sensor is its own bus: nothing shared to open

    async def claim(self, plant: Plant, device: str, spec: PointSpec) -> PointSpec:
        """A plugged-in terminal for *device*, and the spec pointed at its stable path."""
        assert isinstance(spec, SerialSensorSpec)
        sensor = plant.serial_sensor(device, sensor_lines(spec), SENSOR_PERIOD_S)
        return dataclasses.replace(spec, port=sensor.path)

    def couple(self, plant: Plant, device: str, output: PointSpec, input: PointSpec, coupling: Coupling) -> bool:
        return False  # a sensor has no output to follow


class OneWireFarSide:
    """The far side of a 1-Wire thermometer: a kernel-shaped w1 tree with a sensor that answers per read."""

    async def open_links(self, plant: Plant, links: dict[str, object]) -> dict[str, object]:
        return dict(links)  # a thermometer is its own bus: nothing shared to open

    async def claim(self, plant: Plant, device: str, spec: PointSpec) -> PointSpec:
        """A plugged-in DS18B20 for *device*, and the spec pointed at the simulated w1 tree."""
        assert isinstance(spec, OneWireSpec)
        sensor = plant.onewire_thermometer(device, spec.sensor_id)
        return dataclasses.replace(spec, w1_dir=sensor.root)

    def couple(self, plant: Plant, device: str, output: PointSpec, input: PointSpec, coupling: Coupling) -> bool:
        return False  # a thermometer has no output to follow


FAR_SIDES: dict[str, FarSide] = {
    "gpio": GpioFarSide(),
    "modbus": ModbusFarSide(),
    "serial": SerialFarSide(),
    "onewire": OneWireFarSide(),
}
