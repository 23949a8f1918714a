"""The plant's own record (sim.timeline with since): what bench/soak.py checks the daemon against."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import pytest

from controller.service import configfile as config
from controller.service.daemon import Daemon
from tests.conftest import DEMO, LIGHT_TIMEOUT_S, TEST_TEXT, TRAVEL_S, Client, edit


async def history(admin: Client, device: str, since: float) -> dict[str, list[list[float | bool]]]:
    result = await admin.call("sim.timeline", {"device": device, "since": since})
    assert result["device"] == device
    return result


async def test_a_door_move_is_recorded_output_first_then_position_after_its_travel(admin: Client) -> None:
    since = time.monotonic()
    result = await admin.call("door.open")
    held = time.monotonic()
    record = await history(admin, "door", since)
    assert [v for _, v in record["outputs"]] == [True]  # the relay energised once
    assert [v for _, v in record["positions"]] == [True]  # the door reached open once
    (energised, _), (opened, _) = record["outputs"][0], record["positions"][0]
    assert since < energised < opened <= held
    assert opened - energised >= 0.9 * TRAVEL_S  # the simulated travel lies between them
    assert result["changed"] is True

    again = time.monotonic()
    await admin.call("door.open")  # already open: nothing moves, nothing is recorded
    assert await history(admin, "door", again) == {"device": "door", "outputs": [], "positions": []}


async def test_a_failed_action_shows_its_output_going_back_to_safe(admin: Client) -> None:
    await admin.call("sim.fault", {"device": "light", "fault": "no_feedback"})
    since = time.monotonic()
    error = await admin.error("light.on", {"timeout": 0.1})
    assert error["code"] == -32002
    record = await history(admin, "light", since)
    assert [v for _, v in record["outputs"]] == [True, False]  # on, then back to safe
    assert record["positions"] == []  # the feedback never moved


async def test_a_modbus_coil_write_is_recorded_as_output_and_position(admin: Client) -> None:
    since = time.monotonic()
    await admin.call("fan.on")
    record = await history(admin, "fan", since)
    assert [v for _, v in record["outputs"]] == [True]
    assert [v for _, v in record["positions"]] == [True]  # a coil has no travel: it is where it was written


async def test_since_must_be_a_number(admin: Client) -> None:
    for bad in ("yesterday", True, [1]):
        error = await admin.error("sim.timeline", {"device": "door", "since": bad})
        assert error["code"] == -32602 and error["data"]["param"] == "since"


async def test_the_record_survives_a_reload_that_rebuilds_the_device(daemon: Daemon) -> None:
    """A rebuilt light is closed to safe by the reload; the record keeps what came before."""
    assert daemon.plant is not None
    since = time.monotonic()
    await daemon.devices["light"].run("on", {}, 1.0)  # type: ignore[union-attr]
    text = edit(TEST_TEXT, f'feedback = {{ gpio = 23, pull = "down" }}\ntimeout = {LIGHT_TIMEOUT_S}',
                'feedback = { gpio = 23, pull = "down" }\ntimeout = 1.5')
    plan = await daemon.apply(config.loads(text, str(DEMO)))
    assert plan.changed == ("light",)
    outputs = daemon.plant.history("light", since)["outputs"]
    assert [v for _, v in outputs] == [True, False]  # on by the action, off (safe) by the reload


STALL_S = 0.05  # longer than the soak's 3 ms tolerance: a descheduled daemon on a loaded machine


async def test_an_audit_entry_spans_its_action_even_when_the_daemon_stalls_while_recording_it(
        daemon: Daemon, admin: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """An entry's ``time`` minus its ``elapsed_ms`` is never after the moment its action began: the
    trail reads its two clocks together, so a stall between the action's end and the entry (the
    process descheduled, a garbage collection) widens the span instead of moving it later. The
    soak and the partition benchmark judge every output change by these spans; an hour's soak
    found a light switched 7 ms "before" the call that switched it."""
    audit = daemon.ctx.audit
    entries: list[dict[str, Any]] = []
    write = audit.write

    async def stalled(*args: Any, **kwargs: Any) -> dict[str, Any]:
        time.sleep(STALL_S)  # blocks the loop as a stall would, just as the entry is to be made
        entries.append(await write(*args, **kwargs))
        return entries[-1]

    monkeypatch.setattr(audit, "write", stalled)
    mono_to_wall = time.time() - time.monotonic()
    since = time.monotonic()
    await admin.call("light.on")
    ((switched, value),) = (await history(admin, "light", since))["outputs"]
    assert value is True
    (entry,) = entries
    began = datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).timestamp() - entry["elapsed_ms"] / 1000
    assert began <= switched + mono_to_wall + 0.0001  # elapsed_ms is rounded to 0.1 ms
