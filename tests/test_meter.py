"""Modbus registers as a sensor's values (an energy meter): the codec against words the tests write
themselves, NaN and infinity never published, the poll plan in requests per poll, and a meter on the
simulated plant that drifts, only counts up, goes offline and comes back."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from controller.service import configfile as config
from controller.service.daemon import Daemon
from controller.wire.errors import Unavailable
from drivers.base import Quantity
from drivers.modbus import ModbusLink
from drivers.modbus_points import plan_reads
from drivers.modbus_spec import (
    ModbusAddress,
    ModbusLinkConfig,
    ModbusPointSpec,
    ModbusSensorSpec,
    ModbusValue,
    decode,
    is_number,
)
from drivers.sim.modbus_world import SimModbusServer
from tests.conftest import until, until_online


def reg(type: str, word_order: str = "big", scale: float = 1.0, offset: float = 0.0, address: int = 0,
        table: str = "input") -> ModbusAddress:
    return ModbusAddress(table=table, address=address, device_id=1, type=type, word_order=word_order, scale=scale,
                         offset=offset)


# Words as a meter would send them (written out here, not made by the codec under test).
CASES = [
    (reg("int16"), [0xFFFE], -2),
    (reg("uint16"), [0xFFFF], 65535),
    (reg("int32"), [0xFFFE, 0xEE90], -70000),
    (reg("int32", "little"), [0xEE90, 0xFFFE], -70000),
    (reg("uint32"), [0x0001, 0x1170], 70000),
    (reg("uint32", "little"), [0x1170, 0x0001], 70000),
    (reg("float32"), [0x4366, 0x8000], 230.5),
    (reg("float32", "little"), [0x8000, 0x4366], 230.5),
    (reg("float32"), [0xC1AA, 0x0000], -21.25),
    (reg("float64"), [0x4093, 0x4A45, 0x6D5C, 0xFAAD], 1234.5678),
    (reg("float64", "little"), [0xFAAD, 0x6D5C, 0x4A45, 0x4093], 1234.5678),
    (reg("float64"), [0xBF20, 0x624D, 0xD2F1, 0xA9FC], -0.000125),
    (reg("int16", scale=0.1, offset=-40.0), [650], 25.0),
    (reg("int32", scale=0.1), [0xFFFF, 0xFA24], -150.0),
    (reg("uint32", "little", scale=0.001), [0xD687, 0x0012], 1234.567),
]


@pytest.mark.parametrize(("at", "words", "value"), CASES)
def test_every_type_and_word_order_decodes_what_a_meter_sends(at: ModbusAddress, words: list[int],
                                                              value: float) -> None:
    assert decode(at, words) == pytest.approx(value, rel=1e-12)
    assert is_number(decode(at, words))


@pytest.mark.parametrize(("at", "words"), [
    (reg("float32"), [0x7FC0, 0x0000]),  # NaN: what many meters send for "no value"
    (reg("float32", scale=10.0, offset=1.0), [0x7F80, 0x0000]),  # +inf stays inf through scale and offset
    (reg("float64", "little"), [0x0000, 0x0000, 0x0000, 0xFFF0]),  # -inf
])
def test_nan_and_infinity_are_not_numbers_to_publish(at: ModbusAddress, words: list[int]) -> None:
    value = decode(at, words)
    assert not math.isfinite(value) and not is_number(value)


# An Eastron SDM120's input registers (hardware.md): voltage 0, current 6, power 12, energy 342.
SDM120 = {"voltage": 0, "current": 6, "power": 12, "energy": 342}


def meter_spec(max_gap: int, layout: dict[str, int] = SDM120, **types: str) -> ModbusSensorSpec:
    values = {name: ModbusValue(reg(types.get(name, "float32"), address=address), Quantity("x"))
              for name, address in layout.items()}
    return ModbusSensorSpec(link="meters", device_id=1, values=values, max_gap=max_gap)


@pytest.mark.parametrize(("layout", "max_gap", "requests"), [
    (SDM120, 0, 4),  # one request per value: the gaps are not read
    (SDM120, 4, 2),  # voltage..power in one read across the reserved registers, energy in another
    ({"voltage": 0, "current": 2, "power": 4, "energy": 6}, 0, 1),  # contiguous: one read
])
def test_the_poll_plan_reads_a_meter_in_as_few_requests_as_its_addresses_allow(
        layout: dict[str, int], max_gap: int, requests: int) -> None:
    link = ModbusLink(link_config(0))
    meter = link.source("meter", meter_spec(max_gap, layout))
    plan = plan_reads(link.points)
    assert len(plan) == requests
    assert sorted(m.name for g in plan for m in g.members) == sorted(p.name for p in meter.points)


def test_a_read_spans_a_gap_only_when_every_point_on_both_sides_allows_it() -> None:
    link = ModbusLink(link_config(0))
    link.source("meter", meter_spec(4))
    link.input("other.t", ModbusPointSpec(link="meters", at=reg("uint16", address=3)))  # a plain register: no gaps
    plan = {(g.start, g.count) for g in plan_reads(link.points)}
    assert plan == {(0, 2), (3, 1), (6, 8), (342, 2)}


def link_config(port: int) -> ModbusLinkConfig:
    return ModbusLinkConfig(name="meters", transport="tcp", host="127.0.0.1", port=port, baudrate=9600, bytesize=8,
                            parity="N", stopbits=1, timeout=0.2, poll_interval=0.05, offline_after=2,
                            backoff_max=0.2)


@pytest.fixture
async def server() -> AsyncIterator[SimModbusServer]:
    srv = SimModbusServer("meters")
    await srv.start()
    yield srv
    await srv.aclose()


async def test_a_value_reading_nan_is_never_published_and_goes_offline_until_it_reads_a_number(
        server: SimModbusServer) -> None:
    layout = {f"v{i}": 10 * i for i in range(len(CASES))}
    values = {f"v{i}": ModbusValue(replace(at, address=10 * i), Quantity("u")) for i, (at, _w, _v) in enumerate(CASES)}
    spec = ModbusSensorSpec(link="meters", device_id=1, values=values)
    for i, (at, words, _value) in enumerate(CASES):
        server.devices.map(1, "input", 10 * i, at.width)
        for k, word in enumerate(words):
            server.devices.set(1, "input", 10 * i + k, word)
    server.devices.map(1, "input", 500, 2)
    server.devices.set(1, "input", 500, 0x7FC0)  # NaN
    spec = replace(spec, values={**spec.values, "nan": ModbusValue(reg("float32", address=500), Quantity("W"))})
    link = ModbusLink(link_config(server.port))
    meter = link.source("meter", spec)
    readings: list[dict[str, float]] = []
    meter.listen_readings(lambda values, at: readings.append(values))
    loop = asyncio.get_running_loop()
    for point in link.points:
        point.bind(loop)
    try:
        await link.start()
        assert {name: meter.values[name].value for name in layout} == \
            pytest.approx({f"v{i}": value for i, (_a, _w, value) in enumerate(CASES)})
        bad = meter.values["nan"]
        assert bad.value is None and not bad.online and "holds no number (nan)" in (bad.offline_reason or "")
        on_request = server.devices.on_read.append
        await until(lambda cb: on_request(lambda *_: cb()), lambda: link.counters()["polls"] >= 4, timeout=2.0)
        assert readings == []  # three rounds: a reading with a NaN in it is never announced
        server.devices.set(1, "input", 500, 0x4366)  # 230.0 W: a number again
        await until(meter.listen_readings, lambda: bool(readings), timeout=2.0)
        assert bad.online and readings[0]["nan"] == 230.0 and readings[0]["v9"] == pytest.approx(1234.5678)
        assert all(math.isfinite(v) for r in readings for v in r.values())
    finally:
        await link.stop()


METER = """
[modbus.meters]
transport = "tcp"
host = "192.0.2.10"
timeout = 0.1
poll_interval = 0.05
offline_after = 2
backoff_max = 0.2

[devices.meter]
kind = "sensor"
modbus = "meters"
max_gap = 4
values.voltage = { table = "input", register = 0, type = "float32", unit = "V", device_class = "voltage" }
values.current = { table = "input", register = 6, type = "float32", unit = "A", device_class = "current" }
values.power = { table = "input", register = 12, type = "float32", unit = "W", device_class = "power" }
values.energy = { table = "input", register = 342, type = "float32", unit = "kWh", device_class = "energy", \
state_class = "total_increasing" }

[devices.contact]
kind = "input"
input = { modbus = "meters", discrete = 0, device_id = 2 }
debounce_ms = 20
"""


@pytest.fixture
async def daemon() -> AsyncIterator[Daemon]:
    d = Daemon(config.loads(METER, "meter.toml"), simulate=True, host="127.0.0.1", port=0, time_scale=0.1)
    await d.start()
    try:
        yield d
    finally:
        await d.stop()


async def test_the_simulated_meter_drifts_counts_energy_up_in_two_requests_per_poll_and_survives_an_outage(
        daemon: Daemon) -> None:
    meter, plant = daemon.devices["meter"], daemon.plant
    assert plant is not None
    sim = plant.modbus["meters"].devices
    readings: list[dict[str, Any]] = []
    meter.listen(lambda d, what, data: readings.append(data) if what == "reading" else None)
    await until(meter.listen, lambda: len(readings) >= 4, timeout=3.0)
    first = readings[0]
    assert first["units"] == {"voltage": "V", "current": "A", "power": "W", "energy": "kWh"}
    assert 220 < first["values"]["voltage"] < 240 and first["values"]["energy"] >= 1234.5
    energies = [r["values"]["energy"] for r in readings]
    assert energies == sorted(energies) and energies[-1] > energies[0]
    link = next(b for b in daemon.buses if b.name == "meters")
    before, polled = len(sim.reads(1)), link.counters()["polls"]
    await until(meter.listen, lambda: link.counters()["polls"] >= polled + 4, timeout=3.0)
    per_poll = (len(sim.reads(1)) - before) / (link.counters()["polls"] - polled)
    assert per_poll == pytest.approx(2.0, abs=0.5)

    plant.inject("meter", "offline")
    await until_online(meter, False, timeout=3.0)
    with pytest.raises(Unavailable):
        await meter.run("read", {}, 1.0)
    assert "contact" not in [name for name, d in daemon.devices.items() if not d.online]  # device 2 still answers
    plant.clear("meter")
    await until_online(meter, True, timeout=3.0)
    count = len(readings)
    await until(meter.listen, lambda: len(readings) > count, timeout=3.0)
    assert (await meter.run("read", {}, 1.0))["values"]["energy"] >= energies[-1]


async def test_a_modbus_discrete_input_is_an_input_device_moved_by_sim_input(daemon: Daemon) -> None:
    contact, plant = daemon.devices["contact"], daemon.plant
    assert plant is not None and contact.state()["state"] == "off"
    plant.set_input("contact", True)
    await until(contact.listen, lambda: contact.state()["state"] == "on", timeout=2.0)
