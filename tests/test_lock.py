"""The lock kind (controller/devices/lock.py) against its simulated strike and door (drivers/sim/motion_world.py).

The plant runs ten times faster than the demo (time_scale 0.1): the monitor follows in 5 ms, the
visitor opens the door 30 ms after an unlock and shuts it 100 ms later.
"""

from __future__ import annotations

import pytest

from controller.wire.errors import InvalidParams
from tests.doors import Events, call, device, fails, now, outputs, running

# Physics with margins of tens of milliseconds (short travels confirmed within 1.5 x travel_s, 0.1 s
# deadlines), as their author chose them: `make test` runs this module on its own, before the
# parallel run, where four workers on two cores would make a timer late enough to fail them.
pytestmark = pytest.mark.alone

LOCKS = """\
[devices.entrance]
kind = "lock"
strike = { gpio = 17 }
monitor = { gpio = 27, pull = "up" }
door_contact = { gpio = 22, pull = "up" }
hold_s = 2.0
held_open_s = 0.05
timeout = 0.1

[devices.side]
kind = "lock"
strike = { gpio = 5 }
hold_s = 0.05

[devices.gate]
kind = "lock"
strike = { gpio = 6 }
unlock_when = "released"
monitor = { gpio = 13, pull = "up" }
hold_s = 0.05
"""
SCALE = 0.1


def state_is(name: str, **fields: object) -> object:
    return lambda device, what, data: device == name and what == "state" and \
        all(data.get(k) == v for k, v in fields.items())


def alarm_is(name: str, alarm: str) -> object:
    return lambda device, what, data: (device, what, data) == (name, "alarm", {"alarm": alarm})


async def test_unlock_is_confirmed_by_the_monitor_and_relocks_as_soon_as_the_door_closes_again() -> None:
    async with running(LOCKS, SCALE) as daemon:
        events = Events(daemon)
        since = now()
        result = await call(daemon, "entrance", "unlock")
        assert (result["state"], result["changed"]) == ("unlocked", True)
        assert result["evidence"]["source"] == "entrance.monitor"
        assert device(daemon, "entrance").state()["relock_at"] is not None
        await events.wait_for(state_is("entrance", door="open"))  # the visitor comes in...
        relocked = await events.wait_for(state_is("entrance", state="locked"))  # ...and shuts the door
        assert relocked["cause"] == "auto" and relocked["door"] == "closed" and relocked["relock_at"] is None
        assert outputs(daemon, "entrance", since) == [True, False]  # released once, relocked once
        assert events.of("entrance", "alarm") == []


async def test_without_a_door_contact_it_relocks_when_hold_s_has_passed() -> None:
    """side: no monitor either, so the strike's own read-back confirms, and says that is all it is."""
    async with running(LOCKS, SCALE) as daemon:
        events = Events(daemon)
        result = await call(daemon, "side", "unlock")
        assert result["evidence"]["source"] == "output-readback"
        relocked = await events.wait_for(state_is("side", state="locked"))
        assert relocked["cause"] == "auto" and relocked["door"] is None


async def test_a_magnetic_lock_is_held_locked_by_power_and_unlocked_by_releasing_it() -> None:
    async with running(LOCKS, SCALE) as daemon:
        events = Events(daemon)
        gate = device(daemon, "gate")
        assert gate.strike.value is True and gate.state()["state"] == "locked"  # energised at start: locked
        since = now()
        result = await call(daemon, "gate", "unlock")
        assert result["evidence"]["source"] == "gate.monitor"
        await events.wait_for(state_is("gate", state="locked", cause="auto"))
        assert outputs(daemon, "gate", since) == [False, True]


async def test_a_failed_unlock_leaves_the_strike_locked() -> None:
    async with running(LOCKS, SCALE) as daemon:
        assert daemon.plant is not None
        daemon.plant.inject("entrance", "jammed")
        since = now()
        error = await fails(daemon, "entrance", "unlock")
        assert error["code"] == -32002
        assert (error["data"]["expected"], error["data"]["observed"]) == ("unlocked", "locked")
        assert error["data"]["recovery"] == "strike output back at locked; the monitor reports locked"
        assert outputs(daemon, "entrance", since) == [True, False]  # tried, then back to locked
        entrance = device(daemon, "entrance")
        assert entrance.strike.value is False and entrance.state()["relock_at"] is None


async def test_a_door_opened_while_locked_raises_forced_until_it_closes() -> None:
    async with running(LOCKS, SCALE) as daemon:
        assert daemon.plant is not None
        events = Events(daemon)
        daemon.plant.inject("entrance", "forced")
        await events.wait_for(alarm_is("entrance", "forced"))
        assert device(daemon, "entrance").state()["alarm"] == "forced"
        daemon.plant.clear("entrance")
        await events.wait_for(alarm_is("entrance", "cleared"))
        assert device(daemon, "entrance").state()["alarm"] is None


async def test_a_door_left_open_after_the_relock_raises_held_open() -> None:
    async with running(LOCKS, SCALE) as daemon:
        assert daemon.plant is not None
        events = Events(daemon)
        daemon.plant.inject("entrance", "propped")
        await call(daemon, "entrance", "unlock", hold_s=0.1)
        relocked = await events.wait_for(state_is("entrance", state="locked", cause="auto"))
        assert relocked["door"] == "open"  # relocked by the hold time: the door never shut
        await events.wait_for(alarm_is("entrance", "held_open"))
        assert events.of("entrance", "alarm") == [{"alarm": "held_open"}]  # not "forced": it was let in
        daemon.plant.clear("entrance")
        await events.wait_for(alarm_is("entrance", "cleared"))


async def test_a_call_may_ask_for_a_shorter_hold_never_a_longer_one() -> None:
    async with running(LOCKS, SCALE) as daemon:
        entrance = device(daemon, "entrance")
        entrance.check_params("unlock", {"hold_s": 2.0})
        for hold in (2.5, 0, -1, "5", True, float("inf")):
            with pytest.raises(InvalidParams) as info:
                entrance.check_params("unlock", {"hold_s": hold})
            assert info.value.data == {"param": "hold_s", "max": 2.0}
        with pytest.raises(InvalidParams):
            entrance.check_params("lock", {"hold_s": 1.0})  # lock takes no hold_s
