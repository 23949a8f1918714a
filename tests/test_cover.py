"""The cover kind (controller/devices/cover.py) against its simulated motor (drivers/sim/motion_world.py).

Safety is read from the plant's own record (every entry names both relays), not from the kind's
word: the relays are never energised together, a reversal pauses with both released, and every
ending, failed or interrupted, leaves both released.
"""

from __future__ import annotations

from typing import Any

import pytest

from controller.wire.errors import InvalidParams
from tests.doors import Events, call, device, fails, interrupted, now, outputs, record, running

# Physics with margins of tens of milliseconds (short travels confirmed within 1.5 x travel_s, 0.1 s
# deadlines), as their author chose them: `make test` runs this module on its own, before the
# parallel run, where four workers on two cores would make a timer late enough to fail them.
pytestmark = pytest.mark.alone

TRAVEL_S = 0.15
REVERSE_S = 0.05
BLIND = f"""\
[devices.blind]
kind = "cover"
up = {{ gpio = 5 }}
down = {{ gpio = 6 }}
open_endstop = {{ gpio = 13, pull = "up" }}
closed_endstop = {{ gpio = 19, pull = "up" }}
travel_s = {TRAVEL_S}
reverse_delay_s = {REVERSE_S}
"""
BOTH_RELEASED = {"up": False, "down": False}


def assert_interlocked(entries: list[Any]) -> None:
    assert entries, "nothing was recorded"
    for value in entries:
        assert set(value) == {"up", "down"}, value  # every entry names both outputs
        assert not (value["up"] and value["down"]), entries


async def moving(events: Events, word: str) -> None:
    await events.wait_for(lambda d, what, data: what == "state" and data["state"] == word)


async def test_open_and_close_are_confirmed_by_the_endstops_and_never_energise_both_relays() -> None:
    async with running(BLIND) as daemon:
        assert device(daemon, "blind").state()["state"] == "closed"  # the plant starts closed
        since = now()
        opened = await call(daemon, "blind", "open")
        assert (opened["state"], opened["changed"]) == ("open", True)
        assert opened["evidence"]["source"] == "blind.open_endstop"
        closed = await call(daemon, "blind", "close")
        assert closed["evidence"]["source"] == "blind.closed_endstop"
        assert device(daemon, "blind").state()["position"] == 0
        again = await call(daemon, "blind", "close")
        assert again["changed"] is False
        entries = outputs(daemon, "blind", since)
        assert_interlocked(entries)
        assert entries == [{"up": True, "down": False}, BOTH_RELEASED, {"up": False, "down": True}, BOTH_RELEASED]
        positions = [v for _, v in record(daemon, "blind", since)["positions"]]
        assert positions[-1] == {"position": 0, "motion": "stopped"}
        assert {"position": 100, "motion": "stopped"} in positions


async def test_a_reversal_supersedes_the_movement_and_pauses_with_both_relays_released() -> None:
    async with running(BLIND) as daemon:
        events = Events(daemon)
        since = now()
        closed, error = await interrupted(daemon, events, "blind", "open", "opening", "close")
        assert error.code == -32002 and error.data["expected"] == "open"
        assert error.data["recovery"] == "both relays released; superseded by blind.close"
        assert closed["evidence"]["source"] == "blind.closed_endstop"
        entries = record(daemon, "blind", since)["outputs"]
        assert_interlocked([v for _, v in entries])
        (_, up), (t_released, released), (t_down, down) = entries[:3]
        assert up == {"up": True, "down": False}
        assert released == BOTH_RELEASED and down == {"up": False, "down": True}
        assert t_down - t_released >= REVERSE_S  # the pause, both released, before the motor reversed


async def test_stop_interrupts_at_once_and_is_confirmed_by_both_relays_reading_back_released() -> None:
    async with running(BLIND) as daemon:
        events = Events(daemon)
        since = now()
        stopped, error = await interrupted(daemon, events, "blind", "open", "opening", "stop")
        assert error.code == -32002 and error.data["recovery"] == "both relays released; stopped by blind.stop"
        assert (stopped["state"], stopped["changed"]) == ("stopped", True)
        assert stopped["evidence"]["up"] is False and stopped["evidence"]["down"] is False
        assert outputs(daemon, "blind", since) == [{"up": True, "down": False}, BOTH_RELEASED]
        # Stopped where it was: the plant's motor is still, short of the open end.
        last = record(daemon, "blind", since)["positions"][-1][1]
        assert last["motion"] == "stopped" and last["position"] < 100
        assert device(daemon, "blind").state()["state"] == "stopped"
        again = await call(daemon, "blind", "stop")
        assert again["changed"] is False


async def test_set_position_runs_by_travel_time_from_the_last_endstop_and_says_it_is_estimated() -> None:
    async with running(BLIND) as daemon:
        since = now()
        result = await call(daemon, "blind", "set_position", position=50)
        evidence = result["evidence"]
        assert evidence["estimated"] is True and evidence["value"] == 50
        assert evidence["from"]["source"] == "blind.closed_endstop"
        assert device(daemon, "blind").state() | {"since": None} == {"state": "stopped", "position": 50, "since": None}
        plant = record(daemon, "blind", since)["positions"][-1][1]
        assert plant["motion"] == "stopped" and 35 <= plant["position"] <= 65  # where the motor really stopped
        assert (await call(daemon, "blind", "set_position", position=50))["changed"] is False


async def test_before_any_endstop_was_seen_set_position_first_runs_to_the_nearer_end() -> None:
    no_closed_endstop = BLIND.replace('closed_endstop = { gpio = 19, pull = "up" }\n', "")
    async with running(no_closed_endstop) as daemon:
        blind = device(daemon, "blind")
        assert blind.state()["position"] is None and blind.state()["state"] == "unknown"
        since = now()
        result = await call(daemon, "blind", "set_position", position=70)
        assert result["evidence"]["from"]["source"] == "blind.open_endstop"  # calibrated at the open end
        entries = record(daemon, "blind", since)["outputs"]
        assert [v for _, v in entries] == [{"up": True, "down": False}, BOTH_RELEASED, {"up": False, "down": True},
                                           BOTH_RELEASED]
        assert blind.state()["position"] == 70


@pytest.mark.parametrize(("fault", "action", "relay", "after"), [
    ("endstop_broken", "close", "down", {"state": "unknown", "position": None}),  # the closed end went unseen
    ("stall", "open", "up", {"state": "closed", "position": 0}),  # it never left the closed endstop
])
async def test_an_endstop_not_reached_within_one_and_a_half_travel_times_fails_with_both_released(
        fault: str, action: str, relay: str, after: dict[str, Any]) -> None:
    async with running(BLIND) as daemon:
        events = Events(daemon)
        assert daemon.plant is not None
        daemon.plant.inject("blind", fault)
        if fault == "endstop_broken":
            await moving(events, "unknown")  # the closed endstop let go: where is it?
        since = now()
        error = await fails(daemon, "blind", action)
        assert error["code"] == -32002
        assert error["data"]["recovery"] == \
            f"both relays released; the endstop did not report within 1.5 x travel_s ({1.5 * TRAVEL_S:g} s)"
        entries = record(daemon, "blind", since)["outputs"]
        assert [v for _, v in entries] == [{**BOTH_RELEASED, relay: True}, BOTH_RELEASED]
        assert entries[1][0] - entries[0][0] >= 1.5 * TRAVEL_S  # it ran its whole allowance, then stopped
        assert device(daemon, "blind").state() | {"since": None} == {**after, "since": None}


async def test_set_position_takes_only_0_to_100() -> None:
    async with running(BLIND) as daemon:
        for position in (101, -1, "half", True, None, float("nan")):
            with pytest.raises(InvalidParams) as info:
                device(daemon, "blind").check_params("set_position", {"position": position})
            assert info.value.data == {"param": "position"}
