"""The serial sensor driver against a pseudo-terminal behind a symlink (drivers/sim/serial_world.py):
readings, malformed and endless lines, staleness, unplug and replug, requests, clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import pytest

from drivers.serial_sensor import LineParser, SerialSensor, SerialSensorSpec
from drivers.sim.serial_world import SimSerialSensor
from tests.conftest import until_health

PATTERN = re.compile(r"^T=(?P<temp>-?\d+(?:\.\d+)?)(?: H=(?P<rh>\d+))?$")


STALE_S = 0.25  # five of the far side's 0.05 s periods


def make_spec(port: str, **kw) -> SerialSensorSpec:
    base = SerialSensorSpec(port=port, baudrate=9600, bytesize=8, parity="N", stopbits=1, pattern=PATTERN,
                            units={"temp": "°C", "rh": "%"}, request=None, request_interval=1.0,
                            stale_after=STALE_S, max_line=64)
    return replace(base, **kw)


@dataclass
class Rig:
    far: SimSerialSensor  # the sensor end
    sensor: SerialSensor  # the driver
    lines: list[bytes]  # what the far side sends next, one per period (then repeats the last)


@pytest.fixture
async def rig(tmp_path) -> AsyncIterator[Rig]:
    lines = [b""]  # silent until a test has the port open: pyserial drops what came before
    far = SimSerialSensor(asyncio.get_running_loop(), str(tmp_path / "usb-sensor"),
                          lambda: lines.pop(0) if len(lines) > 1 else lines[0], period=0.05)
    far.plug()
    sensor = SerialSensor("hall", make_spec(far.path))
    for point in sensor.points:
        point.bind(asyncio.get_running_loop())
    yield Rig(far, sensor, lines)
    await sensor.stop()
    await far.aclose()


async def open_port(sensor: SerialSensor) -> None:
    """Start the driver and wait until its thread has the port open."""
    await sensor.start()
    assert sensor.opened is not None
    async with asyncio.timeout(3):
        await sensor.opened.wait()


async def reading(sensor: SerialSensor, predicate=lambda values: True, timeout: float = 3.0) -> dict[str, float]:
    got: asyncio.Future[dict[str, float]] = asyncio.get_running_loop().create_future()
    sensor.listen_readings(lambda values, at: got.done() or not predicate(values) or got.set_result(values))
    async with asyncio.timeout(timeout):
        return await got


def test_line_parser_never_holds_more_than_the_limit() -> None:
    parser = LineParser(max_line=8)
    assert parser.feed(b"T=1\nT=") == [b"T=1"]
    assert parser.feed(b"2\n") == [b"T=2"]
    assert parser.feed(b"x" * 100) == [] and parser.overlong == 1 and len(parser.buffer) == 0
    assert parser.feed(b"yyy\nT=3\n") == [b"T=3"]  # the rest of the long line is dropped, not parsed
    assert parser.high_water <= 8


async def test_readings_arrive_with_values_and_units(rig: Rig) -> None:
    await open_port(rig.sensor)
    rig.lines[:] = [b"T=21.4 H=40\r\n"]
    values = await reading(rig.sensor)
    assert values == {"temp": 21.4, "rh": 40.0}
    temp = rig.sensor.values["temp"]
    assert temp.online and temp.value == 21.4 and temp.unit == "°C"
    assert rig.sensor.counters()["readings"] >= 1


async def test_malformed_lines_are_counted_and_skipped(rig: Rig) -> None:
    await open_port(rig.sensor)
    rig.lines[:] = [b"garbage\r\n", b"T=abc\r\n", b"\xff\xfe\r\n", b"T=nan\r\n", b"T=22.5\r\n"]
    assert await reading(rig.sensor) == {"temp": 22.5}
    assert rig.sensor.counters()["malformed_lines"] == 4


async def test_a_megabyte_without_newline_is_one_malformed_line_and_memory_stays_bounded(rig: Rig) -> None:
    await open_port(rig.sensor)
    await rig.far.send(b"\x00garbage" * 131072 + b"\nT=23.0\n")  # 1 MiB, then a good line
    assert await reading(rig.sensor) == {"temp": 23.0}
    counts = rig.sensor.counters()
    assert counts["malformed_lines"] == 1 and counts["readings"] == 1
    assert rig.sensor.buffer_high_water <= 64


async def test_no_valid_reading_for_stale_after_is_offline(rig: Rig) -> None:
    await open_port(rig.sensor)
    rig.lines[:] = [b"T=21.4\r\n"]
    temp = rig.sensor.values["temp"]
    await until_health(temp, online=True)
    rig.lines[:] = [b"T=oops\r\n"]  # the sensor keeps talking nonsense
    await until_health(temp, online=False)
    assert f"no valid reading for {STALE_S} s" in (temp.offline_reason or "")
    rig.lines[:] = [b"T=20.0\r\n"]
    await until_health(temp, online=True)


async def test_unplug_is_offline_and_replug_at_the_same_path_brings_readings_back(rig: Rig) -> None:
    await open_port(rig.sensor)
    rig.lines[:] = [b"T=21.4\r\n"]
    temp = rig.sensor.values["temp"]
    await until_health(temp, online=True)
    rig.far.unplug()
    await until_health(temp, online=False)
    assert "port lost" in (temp.offline_reason or "") or "port missing" in (temp.offline_reason or "")
    assert not os.path.exists(rig.far.path)
    rig.lines[:] = [b"T=19.5\r\n"]
    rig.far.plug()  # a new terminal behind the same symlink
    assert await reading(rig.sensor, lambda v: v["temp"] == 19.5) == {"temp": 19.5}
    assert temp.online and rig.sensor.counters()["reopens"] >= 1


async def test_a_request_command_is_sent_at_the_interval(tmp_path) -> None:
    far = SimSerialSensor(asyncio.get_running_loop(), str(tmp_path / "usb-asked"), lambda: b"", period=60)
    far.plug()
    sensor = SerialSensor("asked", make_spec(far.path, request=b"R\r\n", request_interval=0.1))
    received = bytearray()
    asked = asyncio.Event()
    loop = asyncio.get_running_loop()
    master = far._master
    assert master is not None

    def on_request() -> None:  # the far side answers each request with a reading
        with contextlib.suppress(OSError):
            received.extend(os.read(master, 100))
        if received.count(b"R\r\n") >= 2:
            asked.set()
        far.write(b"T=18.0\n")

    loop.add_reader(master, on_request)
    try:
        await sensor.start()
        async with asyncio.timeout(3):
            await asked.wait()
        assert await reading(sensor) == {"temp": 18.0}
    finally:
        loop.remove_reader(master)
        await sensor.stop()
        await far.aclose()


async def test_shutdown_stops_the_reader_thread_even_when_the_port_is_missing(tmp_path) -> None:
    sensor = SerialSensor("ghost", make_spec(str(tmp_path / "no-such-port")))
    for point in sensor.points:
        point.bind(asyncio.get_running_loop())
    await sensor.start()
    assert any(t.name.startswith("pictl serial") for t in threading.enumerate())
    started = time.monotonic()
    await sensor.stop()
    assert time.monotonic() - started < 1.0  # not a whole backoff or join deadline
    assert not any(t.name.startswith("pictl serial") for t in threading.enumerate())
    assert not sensor.values["temp"].online


async def test_a_sensor_that_has_not_had_time_to_read_is_not_offline(rig: Rig) -> None:
    """The start-up grace (issue 26): until its first line, or stale_after without one, a sensor is
    online without a value (Home Assistant: available, unknown), never a false offline."""
    from controller.devices.sensor import Sensor, SensorConfig
    from controller.wire.errors import Unavailable

    device = Sensor(SensorConfig(name="hall", kind="sensor", timeout=1.0, max_timeout=30.0,
                                 source=rig.sensor.spec), rig.sensor)
    flips: list[bool] = []
    device.listen(lambda d, what, data: flips.append(d.online) if what == "status" else None)
    readings: list[dict] = []
    device.listen(lambda d, what, data: readings.append(data) if what == "reading" else None)
    await open_port(rig.sensor)
    assert device.online and device.state()["values"] == {"temp": None, "rh": None}
    with pytest.raises(Unavailable, match="hall has no reading yet"):
        await device.run("read", {}, 1.0)
    await rig.far.send(b"T=20.5\n")
    await reading(rig.sensor)
    assert flips == []  # nothing to announce: it never was offline
    assert readings[0]["values"] == {"temp": 20.5, "rh": None} and readings[0]["units"]["temp"] == "°C"
    assert await device.run("read", {}, 1.0) == readings[0]


async def test_a_sensor_silent_from_the_start_is_offline_after_stale_after(rig: Rig) -> None:
    sensor = SerialSensor("quiet", make_spec(rig.far.path, stale_after=0.1))  # the rig says nothing
    for point in sensor.points:
        point.bind(asyncio.get_running_loop())
    try:
        await open_port(sensor)
        temp = sensor.values["temp"]
        assert temp.online
        await until_health(temp, online=False)
        assert "no valid reading for 0.1 s" in (temp.offline_reason or "")
    finally:
        await sensor.stop()


async def test_a_reader_thread_stuck_in_a_call_says_the_sensor_is_wedged(rig: Rig) -> None:
    """A read that never returns (a driver stuck in the kernel) stops the thread's turns: wedged()
    says so, and the service watchdog then withholds its ping (tests/test_sdnotify.py)."""
    stuck = threading.Event()
    release = threading.Event()

    def read_forever(port: object) -> None:
        stuck.set()
        release.wait(10)

    rig.sensor._read_lines = read_forever  # type: ignore[method-assign]  # the stuck call
    rig.sensor.wedged_after = 0.2
    await rig.sensor.start()
    try:
        assert await asyncio.to_thread(stuck.wait, 3)
        async with asyncio.timeout(3):
            while rig.sensor.wedged() is None:
                await asyncio.sleep(0.05)
        assert (rig.sensor.wedged() or "").startswith("reader thread stuck for")
    finally:
        release.set()


async def test_a_reader_thread_that_ended_says_the_sensor_is_wedged(rig: Rig) -> None:
    def crash(port: object) -> None:
        raise RuntimeError("a bug in the reader")

    rig.sensor._read_lines = crash  # type: ignore[method-assign]
    await rig.sensor.start()
    assert rig.sensor._thread is not None
    await asyncio.to_thread(rig.sensor._thread.join, 3)
    assert rig.sensor.wedged() == "reader thread ended"
