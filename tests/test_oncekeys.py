"""At-most-once keys remember outcomes, not the frames that produced them (bench/soak.py found
remembered failures keeping every frame of the failed action alive for the whole window)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import pytest

from controller.rpc.oncekeys import OnceKeys
from controller.wire.errors import NotConfirmed


class Payload:
    """Something big a failing action holds in a local variable."""


async def test_a_remembered_failure_keeps_no_frame_of_the_action_alive() -> None:
    keys = OnceKeys(300.0)
    held: list[weakref.ref[Payload]] = []

    async def failing() -> dict[str, Any]:
        payload = Payload()
        held.append(weakref.ref(payload))
        raise NotConfirmed("door did not become open", device="door", recovery="actuator released")

    try:
        await keys.run("tok", "k", "door.open", {}, failing)
    except NotConfirmed:
        pass  # the first caller's error, with its traceback, goes with this block
    else:
        pytest.fail("the failure did not propagate")
    await asyncio.sleep(0)  # one loop turn: the done callbacks of the shield have run
    gc.collect()
    assert held[0]() is None  # the traceback (and the frame holding payload) is gone

    with pytest.raises(NotConfirmed) as replay:  # the replay still tells the first outcome
        await keys.run("tok", "k", "door.open", {}, failing)
    assert replay.value.data == {"device": "door", "recovery": "actuator released"}
    assert replay.value.message == "door did not become open"
    assert len(held) == 1  # and did not act again


async def test_a_remembered_result_is_replayed_without_acting_again() -> None:
    keys = OnceKeys(300.0)
    runs = []

    async def succeed() -> dict[str, Any]:
        runs.append(1)
        return {"state": "open", "changed": True}

    first, replayed = await keys.run("tok", "k", "door.open", {}, succeed)
    again, replayed_again = await keys.run("tok", "k", "door.open", {}, succeed)
    assert (first, replayed) == ({"state": "open", "changed": True}, False)
    assert (again, replayed_again) == (first, True) and runs == [1]


async def test_a_key_reused_for_another_call_is_still_refused_after_it_settled() -> None:
    keys = OnceKeys(300.0)

    async def succeed() -> dict[str, Any]:
        return {"state": "on"}

    await keys.run("tok", "k", "light.on", {}, succeed)
    with pytest.raises(Exception, match="already used for a different call"):
        await keys.run("tok", "k", "light.off", {}, succeed)
