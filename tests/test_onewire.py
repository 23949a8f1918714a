"""1-Wire thermometers: the w1_slave format, the driver on a kernel-shaped tree the test writes itself,
and on the simulated bus whose w1_slave answers per read (failed CRCs, the power-on value, a sensor
that vanishes and returns, a half-written file)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from drivers.onewire import OneWireSpec, OneWireThermometer, Rejected, parse_w1_slave
from drivers.sim.onewire_world import SimW1Bus, crc8, scratchpad, w1_slave_text
from tests.conftest import until, until_health

ID = "28-0316a2794eff"
GOOD = "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n"


def test_the_sims_scratchpad_and_crc_are_the_sensors() -> None:
    # The example a DS18B20 gives at 23.125 °C (72 01 ... crc 57): the simulation speaks the same bytes.
    assert scratchpad(23.125)[:2] == bytes((0x72, 0x01)) and crc8(bytes.fromhex("72014b467fff0e10")) == 0x57
    # The kernel truncates 62.5 m°C steps towards zero.
    assert parse_w1_slave(w1_slave_text(scratchpad(-10.0625)).decode()) == -10.062


@pytest.mark.parametrize(("text", "counter"), [
    (GOOD.replace("YES", "NO"), "crc_errors"),
    (GOOD.replace("72 01", "50 05").replace("t=23125", "t=85000"), "power_on_values"),
    (GOOD[: len(GOOD) * 2 // 3], "incomplete_reads"),  # stopped mid-line: "t=23" would be 0.023 °C
    (GOOD[:-1], "incomplete_reads"),  # the last newline not yet written
    (GOOD.split("\n")[0] + "\n", "incomplete_reads"),
    ("", "incomplete_reads"),
    ("00 00 00 00 00 00 00 00 00 : crc=00 YES\n00 00 00 00 00 00 00 00 00 t=0\n", "malformed_reads"),
    (GOOD.replace("t=23125", "t=130000"), "malformed_reads"),
    (GOOD.replace("0e 10 57 t", "0e 10 58 t"), "malformed_reads"),
    ("hello\nworld\n", "malformed_reads"),
])
def test_what_is_never_published(text: str, counter: str) -> None:
    assert parse_w1_slave(GOOD) == 23.125
    with pytest.raises(Rejected) as caught:
        parse_w1_slave(text)
    assert caught.value.counter == counter


async def running(spec: OneWireSpec) -> OneWireThermometer:
    sensor = OneWireThermometer("boiler", spec)
    loop = asyncio.get_running_loop()
    for point in sensor.points:
        point.bind(loop)
    await sensor.start()
    return sensor


async def eventually(check: Callable[[], object], timeout: float = 2.0) -> None:
    """Re-check *check* until it holds: the reader thread's counters (a rejected read tells the loop
    nothing, by design) and its health are only seen by looking."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.005)


def readings_of(sensor: OneWireThermometer) -> tuple[list[float], Callable[[Callable[..., None]], object]]:
    seen: list[float] = []
    sensor.listen_readings(lambda values, at: seen.append(values["temperature"]))
    return seen, sensor.listen_readings


async def test_a_tree_written_by_the_test_crc_power_on_half_written_vanishing_and_back(tmp_path: Path) -> None:
    slave = tmp_path / ID / "w1_slave"
    slave.parent.mkdir()
    slave.write_text(GOOD)
    sensor = await running(OneWireSpec(ID, str(tmp_path), interval=0.02, stale_after=5.0))
    seen, listen = readings_of(sensor)
    value = sensor.values["temperature"]
    try:
        await until(listen, lambda: bool(seen), timeout=2.0)  # online from the start: its first reading
        assert value.online and value.value == 23.125
        for bad, counter in [(GOOD.replace("YES", "NO"), "crc_errors"),
                             (GOOD.replace("72 01", "50 05").replace("t=23125", "t=85000"), "power_on_values"),
                             (GOOD[:60], "incomplete_reads")]:
            before = sensor.counters()[counter]
            slave.write_text(bad)
            await eventually(lambda c=counter, b=before: sensor.counters()[c] > b)  # type: ignore[misc]
            slave.write_text(GOOD.replace("72 01", "80 01").replace("t=23125", "t=24000"))
            await until(listen, lambda: seen[-1] == 24.0, timeout=2.0)
            slave.write_text(GOOD)
            await until(listen, lambda: seen[-1] == 23.125, timeout=2.0)
        assert set(seen) == {23.125, 24.0}  # 85, the CRC-failed and the half-written readings never came out
        os.rename(slave.parent, tmp_path / "gone")  # unplugged
        await until_health(value, False, timeout=2.0)
        assert "missing from the 1-Wire bus" in (value.offline_reason or "")
        os.rename(tmp_path / "gone", slave.parent)
        await until_health(value, True, timeout=2.0)
        assert sensor.wedged() is None
    finally:
        await sensor.stop()


async def test_no_valid_reading_for_stale_after_is_offline(tmp_path: Path) -> None:
    slave = tmp_path / ID / "w1_slave"
    slave.parent.mkdir()
    slave.write_text(GOOD)
    sensor = await running(OneWireSpec(ID, str(tmp_path), interval=0.02, stale_after=0.15))
    value = sensor.values["temperature"]
    try:
        await until_health(value, True, timeout=2.0)
        slave.write_text(GOOD.replace("YES", "NO"))  # every read fails its CRC from now on
        await until_health(value, False, timeout=2.0)
        assert "no valid reading for 0.15 s" in (value.offline_reason or "")
    finally:
        await sensor.stop()


async def test_a_read_that_never_returns_says_the_bus_is_wedged(tmp_path: Path) -> None:
    slave = tmp_path / ID / "w1_slave"
    slave.parent.mkdir()
    os.mkfifo(slave)  # nobody will ever answer: the read blocks, as on a hung bus master
    sensor = await running(OneWireSpec(ID, str(tmp_path), interval=0.02, stale_after=5.0))
    sensor.wedged_after = 0.05
    try:
        await eventually(sensor.wedged)
        assert "stuck" in (sensor.wedged() or "")
    finally:
        stopping = asyncio.create_task(sensor.stop())
        await asyncio.sleep(0)  # stop() has asked the thread to end; now let its read return
        os.close(os.open(slave, os.O_WRONLY | os.O_NONBLOCK))  # an empty answer
        await stopping


@pytest.fixture
async def bus() -> AsyncIterator[SimW1Bus]:
    w1 = SimW1Bus(time_scale=0.02)  # a conversion takes 15 ms, less than the driver's interval
    yield w1
    await asyncio.to_thread(w1.close)


async def test_the_simulated_bus_answers_each_read_with_its_faults(bus: SimW1Bus) -> None:
    far = bus.thermometer("boiler", ID)
    assert sorted(os.listdir(bus.root)) == [ID, "w1_bus_master1"]
    sensor = await running(OneWireSpec(ID, bus.root, interval=0.03, stale_after=5.0))
    seen, listen = readings_of(sensor)
    value = sensor.values["temperature"]
    try:
        await until(listen, lambda: len(seen) >= 2, timeout=2.0)
        assert 43 < seen[0] < 47
        far.crc_fault = True  # every other read fails its CRC
        crc_before, count = sensor.counters()["crc_errors"], len(seen)
        await until(listen, lambda: len(seen) >= count + 3, timeout=2.0)
        assert sensor.counters()["crc_errors"] >= crc_before + 2 and all(43 < t < 47 for t in seen)
        far.crc_fault = False
        far.half_written(1)
        before = sensor.counters()["incomplete_reads"]
        # Until the cut answer itself was read: an empty read (a reopen meeting the last writer) also
        # counts as incomplete, and a cut answer still owed would cut the power-on answer below.
        await eventually(lambda: far.half_written_left == 0 and sensor.counters()["incomplete_reads"] > before)
        far.unplug()  # sim.fault missing
        await until_health(value, False, timeout=2.0)
        power_on = sensor.counters()["power_on_values"]
        far.plug()  # sim.clear: back on the bus, just powered
        await until_health(value, True, timeout=2.0)
        assert sensor.counters()["power_on_values"] == power_on + 1 and 85.0 not in seen
    finally:
        await sensor.stop()
