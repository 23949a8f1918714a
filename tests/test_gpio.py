"""The GPIO driver against gpiozero's mock pins: levels, safe states, edges into the loop."""

from __future__ import annotations

import asyncio
import threading

import pytest
from gpiozero.pins.mock import MockFactory

from drivers.gpio import GpioBus, GpioInputSpec, GpioOutputSpec, GpioUnavailable, load_pin_factory


@pytest.fixture
def bus() -> GpioBus:
    bus = GpioBus(MockFactory())
    yield bus
    bus.close()


@pytest.mark.parametrize(("active_high", "safe", "level"), [(True, False, False), (False, False, True),
                                                             (True, True, True), (False, True, False)])
async def test_output_drives_its_safe_level_from_the_start(bus: GpioBus, active_high: bool, safe: bool,
                                                           level: bool) -> None:
    pin = bus.factory.pin(5)
    out = bus.output("x.relay", GpioOutputSpec(5, active_high=active_high), safe=safe)
    assert pin.function == "output" and pin.state == level
    # The pin never passed through the other level on the way to output.
    assert all(s.state == level for s in pin.states[1:])
    out.close()


async def test_write_reads_back_from_the_pin(bus: GpioBus) -> None:
    out = bus.output("x.relay", GpioOutputSpec(6, active_high=False), safe=False)
    obs = await out.write(True)
    assert obs.value is True and obs.point == "x.relay"
    assert bus.factory.pin(6).state is False  # active low: energised = line low
    assert out.value is True


async def test_close_returns_output_to_safe_then_releases(bus: GpioBus) -> None:
    out = bus.output("x.relay", GpioOutputSpec(7, active_high=True), safe=False)
    await out.write(True)
    pin = bus.factory.pin(7)
    assert pin.state is True
    bus.close()
    assert pin.states[-1].state is False  # safe level written before the line was released
    assert pin.function == "input"


@pytest.mark.parametrize(("pull", "active_high", "idle"), [("up", None, False), ("down", None, False),
                                                           ("none", True, False)])
async def test_input_reads_its_idle_level(bus: GpioBus, pull: str, active_high: bool | None, idle: bool) -> None:
    if pull == "none":
        bus.factory.pin(8).drive_low()
    point = bus.input("x.in", GpioInputSpec(8, pull=pull, active_high=active_high, debounce_s=None))
    point.bind(asyncio.get_running_loop())
    assert (await point.refresh()).value is idle


async def test_edges_from_another_thread_arrive_on_the_loop_in_order(bus: GpioBus) -> None:
    loop = asyncio.get_running_loop()
    point = bus.input("door.contact", GpioInputSpec(9, pull="up", active_high=None, debounce_s=None))
    point.bind(loop)
    await point.refresh()
    seen: list[tuple[bool, bool]] = []
    point.listen(lambda obs: seen.append((obs.value, threading.current_thread() is threading.main_thread())))
    closed = point.expect(lambda v: v is True)
    pin = bus.factory.pin(9)

    def hand() -> None:  # lgpio's callback thread on a real Pi
        pin.drive_low()  # pulled up: low = active

    thread = threading.Thread(target=hand)
    thread.start()
    obs = await closed.wait(2.0)
    thread.join()
    assert obs.value is True
    assert seen == [(True, True)]  # delivered once, on the loop's thread


async def test_a_line_cannot_be_claimed_twice(bus: GpioBus) -> None:
    bus.output("a.relay", GpioOutputSpec(10, active_high=True), safe=False)
    with pytest.raises(Exception, match=r"in use|already"):
        bus.input("b.contact", GpioInputSpec(10, pull="up", active_high=None, debounce_s=None))


def test_unknown_pin_factory_is_a_clear_error() -> None:
    with pytest.raises(GpioUnavailable, match="unknown gpiozero pin factory"):
        load_pin_factory("nonesuch")
