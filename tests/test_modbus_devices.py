"""Switch on a Modbus coil and setpoint on a holding register, built by the daemon on the simulated
plant (a real pymodbus server): read-back confirmation, its failures, safe state, offline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from controller.service import configfile as config
from controller.service.daemon import Daemon
from controller.wire.errors import InvalidParams, NotConfirmed, Unavailable
from drivers.sim.modbus_world import SimModbusDevices
from tests.conftest import sim_daemon, until_health

CONFIG = """
[modbus.plc]
transport = "tcp"
host = "192.0.2.10"
timeout = 0.2
poll_interval = 0.05
offline_after = 2
backoff_max = 0.2

[devices.fan]
kind = "switch"
output = { modbus = "plc", coil = 0, device_id = 1 }
timeout = 1.0

[devices.pump]
kind = "switch"
output = { modbus = "plc", coil = 1, device_id = 1, verify = { discrete = 1 } }
timeout = 1.0

[devices.heater]
kind = "switch"
output = { modbus = "plc", coil = 2, device_id = 1 }
feedback = { modbus = "plc", discrete = 2, device_id = 1 }
timeout = 1.0

[devices.speed]
kind = "setpoint"
output = { modbus = "plc", holding = 3, device_id = 2, type = "int16", scale = 0.1 }
min = 0
max = 100
unit = "%"
safe = 0
timeout = 1.0
"""


RTU = CONFIG.replace('transport = "tcp"\nhost = "192.0.2.10"',
                     'transport = "rtu"\nport = "/dev/serial/by-id/usb-rs485"\nbaudrate = 19200')


# RTU framing is tried where the transport matters (a confirmed write, an outage); the rest runs on TCP.
both_transports = pytest.mark.parametrize("plant", ["tcp", "rtu"], indirect=True)


@pytest.fixture(params=["tcp"])
async def plant(request) -> AsyncIterator[tuple[Daemon, SimModbusDevices]]:
    """The daemon on a simulated Modbus link: TCP, or RTU reached through socket:// (RTU framing)."""
    text = CONFIG if request.param == "tcp" else RTU
    assert text != CONFIG or request.param == "tcp"
    daemon = sim_daemon(config.loads(text, "modbus.toml"))
    await daemon.start()
    assert daemon.plant is not None
    assert daemon.plant.modbus["plc"].rtu is (request.param == "rtu")
    try:
        yield daemon, daemon.plant.modbus["plc"].devices
    finally:
        await daemon.stop()


@both_transports
async def test_switch_on_a_coil_is_confirmed_by_modbus_readback(plant) -> None:
    daemon, sim = plant
    fan = daemon.devices["fan"]
    result = await fan.run("on", {}, 1.0)
    assert result["state"] == "on" and result["changed"] is True
    evidence = result["evidence"]
    assert evidence["source"] == "modbus-readback" and evidence["value"] == "on"
    assert evidence["address"] == "coil 0 (device 1)" and evidence["raw"] is True
    assert sim.value(1, "coil", 0) == 1
    assert (await fan.run("on", {}, 1.0))["changed"] is False


async def test_readback_mismatch_is_not_confirmed_and_the_coil_goes_back_to_safe(plant) -> None:
    daemon, sim = plant
    sim.stuck.add((1, "coil", 0))  # the device acknowledges the write but the coil does not change
    with pytest.raises(NotConfirmed) as failed:
        await daemon.devices["fan"].run("on", {}, 1.0)
    data = failed.value.data
    assert data["expected"] == "on" and data["observed"] == "off"
    assert data["evidence"]["source"] == "modbus-readback" and data["evidence"]["raw"] is False
    assert data["recovery"] == "output returned to off (safe state)"


async def test_exception_reply_is_not_confirmed_with_the_exception_as_evidence(plant) -> None:
    daemon, sim = plant
    sim.failing.add(1)
    with pytest.raises(NotConfirmed) as failed:
        await daemon.devices["fan"].run("on", {}, 1.0)
    data = failed.value.data
    assert data["observed"] == "exception reply 4 (device failure)"
    assert data["evidence"]["exception_code"] == 4
    assert "FAILED" in data["recovery"]  # the safe write got the same answer, and says so
    sim.failing.discard(1)
    assert sim.value(1, "coil", 0) == 0


async def test_verify_address_confirms_the_switch(plant) -> None:
    daemon, sim = plant
    pump = daemon.devices["pump"]
    result = await pump.run("on", {}, 1.0)  # the simulated status input follows the coil
    assert result["evidence"]["source"] == "modbus-verify"
    assert result["evidence"]["address"] == "discrete 1 (device 1)" and result["evidence"]["raw"] is True
    assert sim.value(1, "coil", 1) == 1 and sim.value(1, "discrete", 1) == 1


async def test_a_status_input_that_does_not_follow_is_not_confirmed(plant) -> None:
    daemon, sim = plant
    sim.stuck.add((1, "discrete", 1))  # the contactor's aux contact is broken
    with pytest.raises(NotConfirmed) as failed:
        await daemon.devices["pump"].run("on", {}, 1.0)
    data = failed.value.data
    assert data["observed"] == "off" and data["evidence"]["source"] == "modbus-verify"
    assert sim.value(1, "coil", 1) == 0  # back to safe


@both_transports
async def test_silent_device_is_offline_refuses_at_once_and_comes_back(plant) -> None:
    daemon, sim = plant
    fan = daemon.devices["fan"]
    sim.silent.add(1)
    await until_health(fan.output, online=False)
    assert not fan.online and daemon.devices["speed"].online  # unit 2 still answers
    with pytest.raises(Unavailable):
        fan.check_online()
    sim.silent.discard(1)
    await until_health(fan.output, online=True)
    assert (await fan.run("on", {}, 1.0))["state"] == "on"


async def test_switch_with_a_modbus_feedback_input_is_confirmed_when_a_poll_sees_it(plant) -> None:
    daemon, sim = plant
    heater = daemon.devices["heater"]
    result = await heater.run("on", {}, 1.0)
    assert result["evidence"]["source"] == "heater.feedback" and result["evidence"]["value"] == "on"
    sim.stuck.add((1, "discrete", 2))
    with pytest.raises(NotConfirmed) as failed:
        await heater.run("off", {}, 0.15)
    assert failed.value.data["observed"] == "on"


async def test_setpoint_is_confirmed_within_tolerance(plant) -> None:
    daemon, sim = plant
    speed = daemon.devices["speed"]
    assert speed.state()["value"] == 0 and speed.state()["unit"] == "%"
    result = await speed.run("set", {"value": 40.04}, 1.0)
    assert sim.value(2, "holding", 3) == 400
    assert result["state"] == pytest.approx(40.0) and result["evidence"]["source"] == "modbus-readback"
    assert speed.state()["value"] == pytest.approx(40.0)


async def test_setpoint_mismatch_restores_the_safe_value(plant) -> None:
    daemon, sim = plant
    sim.stuck.add((2, "holding", 3))
    sim.set(2, "holding", 3, 123)
    with pytest.raises(NotConfirmed) as failed:
        await daemon.devices["speed"].run("set", {"value": 40}, 1.0)
    assert failed.value.data["observed"] == pytest.approx(12.3)
    assert "did not read back" in failed.value.data["recovery"]


@pytest.mark.parametrize(("params", "fragment"), [
    ({}, "missing parameter"), ({"value": "fast"}, "number"), ({"value": True}, "number"),
    ({"value": 101}, "within 0..100"), ({"value": -1}, "within"),
])
async def test_setpoint_params_are_checked_before_anything_is_written(plant, params, fragment) -> None:
    daemon, sim = plant
    before = len(sim.seen)
    with pytest.raises(InvalidParams, match=fragment):
        daemon.devices["speed"].check_params("set", params)
    assert not [r for r in sim.seen[before:] if r.function_code in (5, 6, 15, 16)]


async def test_shutdown_writes_the_safe_state(plant) -> None:
    daemon, sim = plant
    await daemon.devices["fan"].run("on", {}, 1.0)
    await daemon.devices["speed"].run("set", {"value": 55}, 1.0)
    server = daemon.plant.modbus["plc"] if daemon.plant else None
    assert server is not None
    await asyncio.gather(*(bus.stop() for bus in daemon.buses if bus.kind == "modbus"))
    assert sim.value(1, "coil", 0) == 0 and sim.value(2, "holding", 3) == 0
