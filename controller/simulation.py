"""Describe a configuration's physics to the simulated plant (``--simulate``).

Knows what each device kind does in the world: a door's contact follows its
relay after about 0.3 s; a switch's feedback follows its output after about
0.05 s. A switch without feedback needs no physics: its output is read back.
Every Modbus link gets a real pymodbus server on 127.0.0.1 holding the
addresses the devices use; every serial sensor gets a pseudo-terminal that
emits a line about every 0.5 s behind a stable symlink. The drivers are
pointed at them by a rewritten config (host/port of each link, port of each
sensor): driver code never knows it is simulated.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from controller.config import Config, DeviceConfig, ModbusAddress, ModbusPointSpec, SerialSensorSpec
from controller.door import DoorConfig
from controller.sensor import SensorConfig
from controller.setpoint import SetpointConfig
from controller.switch import SwitchConfig
from drivers.modbus import decode, encode
from drivers.sim.modbus_world import SilenceFault, SimModbusDevices
from drivers.sim.plant import Plant

log = logging.getLogger(__name__)

DOOR_TRAVEL_S = 0.3  # time from relay change to contact change
LAMP_FEEDBACK_S = 0.05  # time from output change to feedback change
SENSOR_PERIOD_S = 0.5  # a simulated serial sensor's line interval


def build_plant(config: Config, loop: asyncio.AbstractEventLoop) -> Plant:
    """A plant wired as *config* says, everything initially at rest (doors closed, loads off).

    GPIO only; :func:`start_plant` adds the Modbus servers and serial terminals.
    """
    plant = Plant(loop)
    for device in config.devices.values():
        simulate(plant, device)
    return plant


def simulate(plant: Plant, device: DeviceConfig) -> None:
    """Add one device's GPIO physics to *plant* (at rest); kinds without such physics add nothing.

    (A Modbus or serial device added by a config reload gets no simulated far side: restart.)
    """
    if isinstance(device, DoorConfig) and not _modbus_specs(device):
        open_level = device.contact.active_level if device.open_when_active else not device.contact.active_level
        plant.link(device.name, output_pin=device.relay.pin, energised=device.relay.active_high,
                   input_pin=device.contact.pin, level_when_on=open_level, delay_s=DOOR_TRAVEL_S,
                   fault="jammed")
    elif isinstance(device, SwitchConfig) and device.feedback is not None \
            and not isinstance(device.output, ModbusPointSpec) and not isinstance(device.feedback, ModbusPointSpec):
        on_level = device.feedback.active_level if device.on_when_active else not device.feedback.active_level
        plant.link(device.name, output_pin=device.output.pin, energised=device.output.active_high,
                   input_pin=device.feedback.pin, level_when_on=on_level, delay_s=LAMP_FEEDBACK_S,
                   fault="no_feedback")


def _modbus_specs(device: Any) -> list[ModbusPointSpec]:
    return [v for f in dataclasses.fields(device) if isinstance(v := getattr(device, f.name), ModbusPointSpec)]


async def start_plant(config: Config, loop: asyncio.AbstractEventLoop) -> tuple[Plant, Config]:
    """The whole plant, started, and *config* rewritten to reach it."""
    plant = build_plant(config, loop)
    try:
        links = dict(config.modbus)
        for name, link in config.modbus.items():
            server = await plant.modbus_server(name, rtu=link.transport == "rtu")
            links[name] = dataclasses.replace(link, host="127.0.0.1", port=server.port) if link.transport == "tcp" \
                else dataclasses.replace(link, port=server.url)
        devices = dict(config.devices)
        for device in config.devices.values():
            for spec in _modbus_specs(device):
                sim = plant.modbus[spec.link].devices
                for at in (spec.at, spec.verify):
                    if at is not None:
                        sim.map(at.device_id, at.table, at.address, at.width)
                if "offline" not in plant.faults(device.name):
                    plant.add_fault(device.name, "offline", SilenceFault(sim, spec.at.device_id))
            _modbus_physics(plant, device)
            if isinstance(device, SensorConfig):
                sensor = plant.serial_sensor(device.name, sensor_lines(device.serial), SENSOR_PERIOD_S)
                devices[device.name] = dataclasses.replace(
                    device, serial=dataclasses.replace(device.serial, port=sensor.path))
    except BaseException:
        await plant.aclose()
        raise
    return plant, dataclasses.replace(config, modbus=links, devices=devices)


def _follow(sim: SimModbusDevices, source: ModbusAddress, target: ModbusAddress,
            convert: Callable[[Any], Any]) -> None:
    """Whatever is written at *source* shows up at *target* (converted) at once, unless it is stuck."""
    def on_write(device_id: int, table: str, address: int, count: int) -> None:
        if (device_id, table) != (source.device_id, source.table) \
                or not address <= source.address < address + count:
            return
        words = [sim.value(source.device_id, source.table, source.address + i) for i in range(source.width)]
        raw = encode(target, convert(decode(source, words)))
        for i, word in enumerate([raw] if isinstance(raw, bool) else raw):
            if (target.device_id, target.table, target.address + i) not in sim.stuck:
                sim.set(target.device_id, target.table, target.address + i, int(word))

    sim.on_write.append(on_write)


def _modbus_physics(plant: Plant, device: Any) -> None:
    """A switch's status input (verify or Modbus feedback) and a setpoint's verify follow their output."""
    if isinstance(device, SwitchConfig) and isinstance(device.output, ModbusPointSpec):
        out = device.output
        sim = plant.modbus[out.link].devices
        if out.verify is not None:
            _follow(sim, out.at, out.verify, lambda on: out.verify_on if on else out.verify_off)
        feedback = device.feedback
        if isinstance(feedback, ModbusPointSpec) and feedback.link == out.link:
            _follow(sim, out.at, feedback.at, lambda on: int(bool(on) == device.on_when_active))
    elif isinstance(device, SetpointConfig) and device.output.verify is not None:
        _follow(plant.modbus[device.output.link].devices, device.output.at, device.output.verify, lambda v: v)


def sensor_lines(spec: SerialSensorSpec) -> Callable[[], bytes]:
    """Lines a sensor with *spec*'s pattern would send: ``T=21.4`` style if the pattern takes it."""
    names = spec.names
    start = time.monotonic()
    formats: list[Callable[[list[tuple[str, float]]], str]] = [
        lambda vals: " ".join(f"{n[0].upper()}={v:.1f}" for n, v in vals),
        lambda vals: " ".join(f"{n}={v:.1f}" for n, v in vals),
        lambda vals: ",".join(f"{v:.1f}" for _n, v in vals),
        lambda vals: " ".join(f"{v:.1f}" for _n, v in vals),
    ]
    chosen = formats[0]
    for fmt in formats:
        match = spec.pattern.search(fmt([(n, 21.5) for n in names]))
        if match and all(match.group(n) is not None for n in names):
            chosen = fmt
            break
    else:
        log.warning("the simulated sensor's lines (%r) do not match its pattern: it will look stale",
                    chosen([(n, 21.5) for n in names]))

    def line() -> bytes:
        t = time.monotonic() - start
        values = [(n, 21.0 + 10 * i + 0.5 * math.sin(t / 20 + i)) for i, n in enumerate(names)]
        return (chosen(values) + "\r\n").encode()

    return line
