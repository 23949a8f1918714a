"""End to end on the demo plant (README, *What the demo plant has*): the Modbus fan and the serial hall_temp over a real
WebSocket, with their simulated faults (`offline`, `unplugged`) and recovery."""

from __future__ import annotations

import asyncio
import os
import socket
import threading

import pytest

from controller.devices.base import Device
from controller.service.daemon import Daemon
from tests.conftest import Client, sim_daemon, until_online


async def first_reading(device: Device, timeout: float = 3.0) -> dict:
    got: asyncio.Future[dict] = asyncio.get_running_loop().create_future()
    device.listen(lambda d, what, data: what == "reading" and (got.done() or got.set_result(data)))
    async with asyncio.timeout(timeout):
        return await got


async def test_fan_on_is_confirmed_by_reading_the_coil_back(daemon: Daemon, admin: Client) -> None:
    result = await admin.call("fan.on")
    assert result["state"] == "on" and result["changed"] is True and result["confirmed"] is True
    assert result["evidence"]["source"] == "modbus-readback"
    assert result["evidence"]["address"] == "coil 0 (device 1)"
    assert daemon.plant is not None and daemon.plant.modbus["plant"].devices.value(1, "coil", 0) == 1
    assert (await admin.call("fan.state"))["state"] == "on"
    assert (await admin.call("fan.off"))["state"] == "off"


async def test_a_switch_has_one_state_shape_whatever_its_bus(admin: Client) -> None:
    """The Modbus fan (read back, no feedback) answers like the GPIO light (with feedback)."""
    await admin.call("fan.on")
    fan, light = await admin.call("fan.state"), await admin.call("light.state")
    assert set(fan) == set(light) == {"state", "output", "since"}
    assert fan["state"] == fan["output"] == "on"
    status = (await admin.call("system.status"))["devices"]
    assert set(status["fan"]["state"]) == set(status["light"]["state"])


async def test_fan_offline_fault_then_clear(daemon: Daemon, admin: Client) -> None:
    fan = daemon.devices["fan"]
    await admin.call("sim.fault", {"device": "fan", "fault": "offline"})
    await until_online(fan, False)
    status = (await admin.call("system.status"))["devices"]["fan"]
    assert status["online"] is False and "no reply" in status["reason"] and status["since"].endswith("Z")
    error = await admin.error("fan.on", timeout=2.0)
    assert error["code"] == -32004 and error["data"]["device"] == "fan"
    await admin.call("sim.clear", {"device": "fan"})
    await until_online(fan, True)
    assert (await admin.call("fan.on"))["state"] == "on"


async def test_fan_faults_are_listed(admin: Client) -> None:
    error = await admin.error("sim.fault", {"device": "fan", "fault": "melted"})
    assert error["code"] == -32602 and error["data"]["faults"] == ["offline"]


async def test_hall_temp_read_returns_value_unit_and_time(daemon: Daemon, admin: Client) -> None:
    sensor = daemon.devices["hall_temp"]
    if sensor.state()["at"] is None:  # just started: online, its first line on its way
        await first_reading(sensor)
    result = await admin.call("hall_temp.read")
    assert set(result) == {"value", "unit", "at"}
    assert isinstance(result["value"], float) and 15 < result["value"] < 30
    assert result["unit"] == "°C" and result["at"].endswith("Z")
    assert (await admin.call("hall_temp.state"))["unit"] == "°C"


async def test_hall_temp_unplugged_then_replugged(daemon: Daemon, admin: Client) -> None:
    sensor = daemon.devices["hall_temp"]
    await first_reading(sensor)
    await admin.call("sim.fault", {"device": "hall_temp", "fault": "unplugged"})
    await until_online(sensor, False)
    error = await admin.error("hall_temp.read")
    assert error["code"] == -32004 and error["data"]["device"] == "hall_temp"
    status = (await admin.call("system.status"))["devices"]["hall_temp"]
    assert status["online"] is False and status["reason"]
    await admin.call("sim.clear", {"device": "hall_temp"})
    await first_reading(sensor)
    assert sensor.online
    assert (await admin.call("hall_temp.read"))["unit"] == "°C"


async def test_panel_may_not_read_the_sensor_or_switch_the_fan(daemon: Daemon, panel: Client) -> None:
    # The demo panel role is door.*, light.*, *.state: the fan and hall_temp actions are admin's.
    assert (await panel.error("fan.on"))["code"] == -32001
    assert "state" in await panel.call("fan.state")


async def test_stop_leaves_no_thread_socket_or_terminal_behind(demo_config) -> None:
    fds_before = set(os.listdir("/proc/self/fd"))
    daemon = sim_daemon(demo_config)
    await daemon.start()
    assert daemon.plant is not None
    modbus_port = daemon.plant.modbus["plant"].port
    link = daemon.plant.serial["hall_temp"].path
    assert os.path.islink(link)
    await daemon.stop()
    assert not [t.name for t in threading.enumerate() if t.name.startswith("pictl")]
    assert not os.path.exists(os.path.dirname(link))
    with pytest.raises(OSError):  # the simulated Modbus server no longer listens
        socket.create_connection(("127.0.0.1", modbus_port), timeout=1).close()
    leaked = {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in set(os.listdir("/proc/self/fd")) - fds_before
              if os.path.exists(f"/proc/self/fd/{fd}")}
    assert not leaked


async def test_a_silent_modbus_unit_and_a_flooded_sensor_slow_nothing_else(daemon: Daemon, admin: Client) -> None:
    assert daemon.plant is not None
    await admin.call("sim.fault", {"device": "fan", "fault": "offline"})
    flood = asyncio.create_task(daemon.plant.serial["hall_temp"].send(b"\x00" * 2_000_000))  # no newline at all
    # Door and light are still confirmed within their own deadlines while the fan's
    # requests time out and the sensor's reader thread discards megabytes.
    door, light = await asyncio.gather(admin.call("door.open"), admin.call("light.on"))
    assert door["state"] == "open" and light["state"] == "on"
    assert await admin.call("system.ping") == {"pong": True}
    await flood
    await until_online(daemon.devices["fan"], False)
    sensor = next(b for b in daemon.buses if b.kind == "serial")
    assert sensor.counters()["malformed_lines"] >= 1 and sensor.buffer_high_water <= 256
