"""The garage kind (controller/devices/garage.py) against its simulated opener (drivers/sim/motion_world.py).

Presses are counted in the plant's own record of the pulse relay, not taken from the kind's word.
"""

from __future__ import annotations

import pytest

from tests.doors import Events, call, device, fails, interrupted, now, outputs, record, running

# Physics with margins of tens of milliseconds (short travels confirmed within 1.5 x travel_s, 0.1 s
# deadlines), as their author chose them: `make test` runs this module on its own, before the
# parallel run, where four workers on two cores would make a timer late enough to fail them.
pytestmark = pytest.mark.alone

GARAGE = """\
[devices.garage]
kind = "garage"
pulse = { gpio = 23 }
closed_contact = { gpio = 24, pull = "up" }
open_contact = { gpio = 25, pull = "up" }
pulse_s = 0.03
travel_s = 0.12
start_s = 0.06
max_pulses = 3
"""
ONE_PRESS = [True, False]


def presses(values: list[bool]) -> int:
    """Presses in a record of the pulse relay (energised, released)."""
    assert values == ONE_PRESS * (len(values) // 2), values  # every press was released again
    return len(values) // 2


async def test_open_and_close_are_one_press_each_and_confirmed_by_the_limit_contacts() -> None:
    async with running(GARAGE) as daemon:
        assert device(daemon, "garage").state()["state"] == "closed"  # the plant starts closed
        since = now()
        opened = await call(daemon, "garage", "open")
        assert opened["evidence"]["source"] == "garage.open_contact"
        assert (opened["state"], opened["evidence"]["pulses"]) == ("open", 1)
        closed = await call(daemon, "garage", "close")
        assert (closed["evidence"]["source"], closed["evidence"]["pulses"]) == ("garage.closed_contact", 1)
        again = await call(daemon, "garage", "close")
        assert (again["changed"], again["evidence"]["pulses"]) == (False, 0)
        assert presses(outputs(daemon, "garage", since)) == 2


async def test_a_press_that_does_not_start_the_door_is_repeated() -> None:
    """The opener's memory points the wrong way once: the first press leaves it at its limit."""
    async with running(GARAGE) as daemon:
        assert daemon.plant is not None
        daemon.plant.inject("garage", "reversed")
        since = now()
        opened = await call(daemon, "garage", "open")
        assert (opened["state"], opened["evidence"]["pulses"]) == ("open", 2)
        assert presses(outputs(daemon, "garage", since)) == 2
        motions = [v["motion"] for _, v in record(daemon, "garage", since)["positions"]]
        assert "closing" not in motions  # the door itself only ever went up


async def test_an_opener_without_power_gets_max_pulses_then_the_call_fails() -> None:
    async with running(GARAGE) as daemon:
        assert daemon.plant is not None
        daemon.plant.inject("garage", "no_power")
        since = now()
        error = await fails(daemon, "garage", "open")
        assert error["code"] == -32002
        assert (error["data"]["expected"], error["data"]["observed"]) == ("open", "closed")
        assert error["data"]["recovery"] == "pulse relay released; pulsed 3 times and the door did not start " \
                                            "towards open"
        assert presses(outputs(daemon, "garage", since)) == 3
        assert device(daemon, "garage").pulse.value is False


async def test_a_door_that_reversed_on_its_own_is_never_pressed_again() -> None:
    async with running(GARAGE) as daemon:
        assert daemon.plant is not None
        await call(daemon, "garage", "open")
        daemon.plant.inject("garage", "obstacle")
        since = now()
        error = await fails(daemon, "garage", "close")
        assert error["code"] == -32002 and error["data"]["observed"] == "open"
        assert error["data"]["recovery"] == "pulse relay released; the opener reversed on its own (an obstacle?): " \
                                            "not pulsed again"
        assert presses(outputs(daemon, "garage", since)) == 1  # max_pulses is 3: still only the one press
        motions = [v["motion"] for _, v in record(daemon, "garage", since)["positions"]]
        assert motions[0] == "closing" and "opening" in motions and motions[-1] == "stopped"


async def test_stop_interrupts_the_call_and_a_door_stopped_mid_way_reaches_its_target_anyway() -> None:
    """Stopped half way, the opener's next run is downwards; an open then meets the closed limit
    (the wrong one) and presses again from there."""
    async with running(GARAGE) as daemon:
        events = Events(daemon)
        since = now()
        stopped, error = await interrupted(daemon, events, "garage", "open", "opening", "stop")
        assert error.code == -32002 and error.data["recovery"] == "pulse relay released; stopped by garage.stop"
        assert stopped["state"] == "stopped"
        assert stopped["evidence"]["estimated"] is True and stopped["evidence"]["pulses"] == 1
        assert presses(outputs(daemon, "garage", since)) == 2
        plant = record(daemon, "garage", since)["positions"][-1][1]
        assert plant["motion"] == "stopped" and 0 < plant["position"] < 100  # the door really stopped mid-way
        assert device(daemon, "garage").state()["state"] == "stopped"

        mid = now()
        opened = await call(daemon, "garage", "open")
        assert (opened["evidence"]["source"], opened["evidence"]["pulses"]) == ("garage.open_contact", 2)
        motions = [v["motion"] for _, v in record(daemon, "garage", mid)["positions"]]
        assert motions[0] == "closing" and motions[-1] == "stopped" and "opening" in motions


async def test_with_only_the_closed_contact_the_open_end_is_reached_by_travel_time() -> None:
    only_closed = GARAGE.replace('open_contact = { gpio = 25, pull = "up" }\n', "")
    async with running(only_closed) as daemon:
        opened = await call(daemon, "garage", "open")
        evidence = opened["evidence"]
        assert (opened["state"], evidence["source"], evidence["estimated"], evidence["pulses"]) == \
            ("open", "travel-time", True, 1)
        assert device(daemon, "garage").state()["state"] == "open"
        closed = await call(daemon, "garage", "close")
        assert closed["evidence"]["source"] == "garage.closed_contact" and "estimated" not in closed["evidence"]
