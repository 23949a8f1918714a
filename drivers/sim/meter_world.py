"""A simulated meter on a simulated Modbus server: registers that drift, and an energy total that only rises.

Whatever a Modbus sensor's config reads (``values``: register, table, type,
word order, scale, offset) the meter fills in, encoded exactly as the driver
will decode it. What each value does follows its meaning (its ``device_class``,
else its name): a voltage near 230 V, a current of a few amperes, a power that
is their product, a frequency near 50 Hz, an energy total that integrates the
power and never falls; anything else wanders gently around 1. The values are
brought up to date whenever the server is asked for them (no timer runs), on
the plant's clock: with ``time_scale`` 0.1 they drift ten times as fast.

Registers between two values, up to the sensor's ``max_gap``, exist and read 0:
a meter that answers reads across its reserved registers, which is what lets
the poll merge them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from drivers.modbus_spec import ModbusSensorSpec, ModbusValue, encode
from drivers.sim.modbus_world import SimModbusDevices

ENERGY_START = {"Wh": 1_234_500.0, "kWh": 1234.5, "MWh": 1.2345}  # the meter's reading when the demo starts
POWER_PER_WATT = {"W": 1.0, "kW": 0.001, "MW": 1e-6}


class SimMeter:
    """One meter: the registers of a Modbus sensor's values on one simulated device."""

    def __init__(self, sim: SimModbusDevices, spec: ModbusSensorSpec, time_scale: float) -> None:
        self.sim = sim
        self.spec = spec
        self.time_scale = time_scale  # simulated seconds = real seconds / time_scale
        self.start = self.last = time.monotonic()
        self.energy = {name: ENERGY_START.get(v.quantity.unit, 1234.5) for name, v in spec.values.items()
                       if _meaning(name, v) == "energy"}  # value name -> its total so far, in its own unit
        self._map()
        self.update()

    def _map(self) -> None:
        spans = sorted((v.at.table, v.at.address, v.at.width) for v in self.spec.values.values())
        for i, (table, address, width) in enumerate(spans):
            self.sim.map(self.spec.device_id, table, address, width)
            if i + 1 < len(spans) and spans[i + 1][0] == table:
                gap = spans[i + 1][1] - (address + width)
                if 0 < gap <= self.spec.max_gap:
                    self.sim.map(self.spec.device_id, table, address + width, gap)  # reserved: reads 0

    def physics(self, t: float) -> dict[str, float]:
        """Volts, amperes, watts and hertz at simulated time *t* (seconds since the start)."""
        volts = 230.0 + 3.0 * math.sin(t / 40.0)
        amperes = 2.5 + 1.5 * math.sin(t / 25.0)
        return {"voltage": volts, "current": amperes, "power": volts * amperes,
                "frequency": 50.0 + 0.05 * math.sin(t / 30.0), "power_factor": 0.95 + 0.03 * math.sin(t / 50.0)}

    def update(self) -> None:
        """Bring every value up to now; the energy totals add the power since the last update."""
        now = time.monotonic()
        t = (now - self.start) / self.time_scale
        dt_hours = (now - self.last) / self.time_scale / 3600.0
        self.last = now
        world = self.physics(t)
        for name, value in self.spec.values.items():
            meaning = _meaning(name, value)
            unit = value.quantity.unit
            if meaning == "energy":
                watts = world["power"]
                self.energy[name] += watts * dt_hours * {"Wh": 1.0, "kWh": 1e-3, "MWh": 1e-6}.get(unit, 1e-3)
                number = self.energy[name]
            elif meaning == "power":
                number = world["power"] * POWER_PER_WATT.get(unit, 1.0)
            elif meaning in world:
                number = world[meaning]
            else:
                number = 1.0 + 0.1 * math.sin(t / 20.0)
            self._write(value, number)

    def _write(self, value: ModbusValue, number: float) -> None:
        try:
            words = encode(value.at, number)
        except ValueError:
            return  # the register cannot hold it (a scale that overflows): it keeps its last value
        assert isinstance(words, list)
        for i, word in enumerate(words):
            self.sim.set(self.spec.device_id, value.at.table, value.at.address + i, word)

    def on_read(self, device_id: int, table: str, address: int, count: int) -> None:
        if device_id == self.spec.device_id and any(
                v.at.table == table and v.at.address < address + count and address < v.at.address + v.at.width
                for v in self.spec.values.values()):
            self.update()


def _meaning(name: str, value: ModbusValue) -> str:
    return value.quantity.device_class or name


def attach_meter(sim: SimModbusDevices, spec: ModbusSensorSpec, time_scale: float) -> tuple[SimMeter,
                                                                                           Callable[[], None]]:
    """A meter answering on *sim* for *spec*; returns it and the undo that takes it out."""
    meter = SimMeter(sim, spec, time_scale)
    sim.on_read.append(meter.on_read)
    return meter, lambda: sim.on_read.remove(meter.on_read) if meter.on_read in sim.on_read else None
