"""Devices and confirmation, without the network: the real GPIO driver on the plant."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from controller.devices import registry as kinds
from controller.devices.wiring import Wiring
from controller.service import configfile as config
from controller.service.simulation import start_plant
from controller.wire.errors import Busy, InvalidParams, NotConfirmed, Unavailable
from drivers.base import OutputPoint
from drivers.gpio import GpioBus
from tests.conftest import TIME_SCALE, TRAVEL_S

CONFIG = """
[devices.door]
kind = "door"
relay = { gpio = 17, active = "low" }
contact = { gpio = 27, pull = "up" }
timeout = 1.0
max_timeout = 2.0

[devices.light]
kind = "switch"
output = { gpio = 22 }
feedback = { gpio = 23, pull = "down" }
timeout = 0.5

[devices.bell]
kind = "switch"
output = { gpio = 24 }
timeout = 0.5
"""


@pytest.fixture
async def plant_devices(time_scale: float):
    loop = asyncio.get_running_loop()
    cfg = config.loads(CONFIG, "devices.toml")
    plant, cfg = await start_plant(cfg, loop, time_scale=time_scale)
    bus = GpioBus(plant.gpio_factory)
    wiring = Wiring({bus.key: bus})
    devices = {name: kinds.build(dc, wiring) for name, dc in cfg.devices.items()}
    for device in devices.values():
        for point in device.points:
            point.bind(loop)
        await device.start()
    yield plant, devices
    bus.close()
    await plant.aclose()


async def test_door_with_active_low_relay_opens_and_closes(plant_devices) -> None:
    plant, devices = plant_devices
    door = devices["door"]
    assert door.state()["state"] == "closed" and plant.gpio_factory.pin(17).state is True  # released = high
    result = await door.run("open", {}, 1.0)
    assert result["state"] == "open" and result["changed"] and plant.gpio_factory.pin(17).state is False
    result = await door.run("close", {}, 1.0)
    assert result["state"] == "closed" and plant.gpio_factory.pin(17).state is True


async def test_not_confirmed_carries_what_was_expected_and_seen(plant_devices) -> None:
    plant, devices = plant_devices
    plant.inject("door", "jammed")
    with pytest.raises(NotConfirmed) as failed:
        await devices["door"].run("open", {}, 0.1)
    data = failed.value.data
    assert data["expected"] == "open" and data["observed"] == "closed" and data["elapsed_ms"] >= 95
    assert data["recovery"].startswith("actuator released")
    assert devices["door"].relay.value is False


async def test_door_close_that_is_not_observed_keeps_relay_released(plant_devices) -> None:
    plant, devices = plant_devices
    door = devices["door"]
    await door.run("open", {}, 1.0)
    plant.inject("door", "jammed")
    with pytest.raises(NotConfirmed) as failed:
        await door.run("close", {}, 0.1)
    assert failed.value.data["observed"] == "open"
    assert door.relay.value is False and door.state()["state"] == "open"


async def test_state_changes_are_reported_with_their_cause(plant_devices) -> None:
    plant, devices = plant_devices
    door = devices["door"]
    seen: list[tuple[str, str]] = []
    door.listen(lambda d, what, data: seen.append((data["state"], data["cause"])) if what == "state" else None)
    await door.run("open", {}, 1.0)
    await door.run("close", {}, 1.0)
    pushed = door.contact.expect(lambda v: v is False)
    plant.move_by_hand("door", True)  # someone pushes the door open
    await pushed.wait(1.0)
    assert seen == [("moving", "rpc"), ("open", "rpc"), ("moving", "rpc"), ("closed", "rpc"), ("open", "external")]


async def test_three_queued_actions_run_in_arrival_order(plant_devices) -> None:
    _plant, devices = plant_devices
    door = devices["door"]
    results = await asyncio.gather(door.run("open", {}, 2.0), door.run("close", {}, 2.0), door.run("open", {}, 2.0))
    assert [r["state"] for r in results] == ["open", "closed", "open"]
    assert all(r["changed"] for r in results)
    stamps = [r["evidence"]["at"] for r in results]
    assert stamps == sorted(stamps)


async def test_waiting_longer_than_the_timeout_in_the_queue_is_busy(plant_devices) -> None:
    plant, devices = plant_devices
    plant.inject("door", "jammed")
    energised = devices["door"].relay.expect(lambda v: v is True)
    first = asyncio.create_task(devices["door"].run("open", {}, 0.2))
    await energised.wait(1.0)  # the first run holds the queue
    with pytest.raises(Busy):
        await devices["door"].run("close", {}, 0.05)
    with pytest.raises(NotConfirmed):
        await first


@pytest.mark.parametrize("time_scale", [0.5])  # a travel long enough to tell 1.5 travels from 2
async def test_the_queue_wait_does_not_shorten_the_confirmation(plant_devices, time_scale: float) -> None:
    _plant, devices = plant_devices
    door = devices["door"]
    # Each door move takes one travel; the second waits one travel in the queue, then
    # still gets its full 1.5 travels to confirm.
    deadline = 1.5 * TRAVEL_S / TIME_SCALE * time_scale
    energised = door.relay.expect(lambda v: v is True)
    first = asyncio.create_task(door.run("open", {}, deadline))
    await energised.wait(1.0)
    second = await door.run("close", {}, deadline)
    assert (await first)["state"] == "open" and second["state"] == "closed"


async def test_switch_with_feedback_and_fault(plant_devices) -> None:
    plant, devices = plant_devices
    light = devices["light"]
    on = await light.run("on", {}, 0.5)
    assert on["evidence"]["source"] == "light.feedback" and light.state()["output"] == "on"
    await light.run("off", {}, 0.5)
    plant.inject("light", "no_feedback")
    with pytest.raises(NotConfirmed) as failed:
        await light.run("toggle", {}, 0.1)
    assert failed.value.data["expected"] == "on"
    assert failed.value.data["recovery"] == "output returned to off (safe state)"
    assert light.output.value is False


async def test_switch_without_feedback_is_confirmed_by_readback(plant_devices) -> None:
    _plant, devices = plant_devices
    bell = devices["bell"]
    result = await bell.run("on", {}, 0.5)
    assert result["evidence"]["source"] == "output-readback"
    assert result["evidence"]["point"] == "bell.output" and result["evidence"]["value"] == "on"
    again = await bell.run("on", {}, 0.5)
    assert again["changed"] is False


class StuckOutput(OutputPoint):
    """An output whose driver stage has failed: it always reads back low."""

    def __init__(self) -> None:
        super().__init__("bell.output")
        self.writes: list[Any] = []

    async def _write(self, value: Any) -> None:
        self.writes.append(value)

    async def _read(self) -> bool:
        return False


async def test_readback_mismatch_is_not_confirmed_and_returns_to_safe(plant_devices) -> None:
    _plant, devices = plant_devices
    from controller.devices.switch import Switch

    stuck = StuckOutput()
    stuck.bind(asyncio.get_running_loop())
    bell = Switch(devices["bell"].config, stuck, None)
    await bell.start()
    with pytest.raises(NotConfirmed) as failed:
        await bell.run("on", {}, 0.5)
    assert failed.value.data["observed"] == "off"
    assert stuck.writes == [True, False]  # commanded, then back to the safe level


async def test_offline_device_refuses_at_once(plant_devices) -> None:
    _plant, devices = plant_devices
    stuck = StuckOutput()
    stuck.online, stuck.offline_since = False, 1_000_000.0
    from controller.devices.switch import Switch

    bell = Switch(devices["bell"].config, stuck, None)
    with pytest.raises(Unavailable) as refused:
        bell.check_online()
    assert refused.value.data["device"] == "bell" and refused.value.data["since"].startswith("1970-01-12")
    assert stuck.writes == []


@pytest.mark.parametrize(("params", "effective"), [({}, 1.0), ({"timeout": 0.25}, 0.25), ({"timeout": 99}, 2.0)])
def test_timeout_defaults_and_caps(plant_devices, params: dict[str, Any], effective: float) -> None:
    _plant, devices = plant_devices
    assert devices["door"].check_params("open", params) == effective


@pytest.mark.parametrize("bad", [0, -3, float("nan"), float("inf"), "1", None, True, 1e9])
def test_bad_timeouts_are_invalid(plant_devices, bad: Any) -> None:
    _plant, devices = plant_devices
    with pytest.raises(InvalidParams):
        devices["door"].check_params("open", {"timeout": bad})


async def test_a_failed_release_after_a_jam_is_reported_and_logged_with_its_traceback(
        plant_devices, caplog: pytest.LogCaptureFixture) -> None:
    plant, devices = plant_devices
    door = devices["door"]
    plant.inject("door", "jammed")

    async def lost_line(value: Any) -> None:  # the relay's line went away while the door was moving
        if not value:
            raise OSError("GPIO line lost")
        door.relay.write_now(True)

    door.relay._write = lost_line  # type: ignore[method-assign]
    with pytest.raises(NotConfirmed) as failed:
        await door.run("open", {}, 0.1)
    assert failed.value.data["recovery"].startswith("actuator release FAILED; check the relay")
    [record] = [r for r in caplog.records if "releasing the actuator" in r.getMessage()]
    assert record.levelname == "ERROR" and record.exc_info is not None and "GPIO line lost" in caplog.text
