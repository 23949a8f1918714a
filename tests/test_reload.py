"""Config reload: the pure plan, and a running daemon moved to a new config in process."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus

from controller.devices import registry as kinds
from controller.devices import switch
from controller.security.secrets import digest_secret
from controller.service import configfile as config
from controller.service.daemon import Daemon
from controller.service.reload import plan_reload
from controller.settings.load import Config
from tests.conftest import DEMO_GPIO_TEXT, ROOT, TIME_SCALE, Client, open_client, sim_daemon

DEMO_TEXT = DEMO_GPIO_TEXT
PANEL_HASH = re.search(r'\[auth\.tokens\.demo-panel\]\nrole = "panel"\nhash = "([^"]+)"', DEMO_TEXT).group(1)
ROTATED = "rotated-panel-secret"


def rotated_panel() -> str:
    """The demo config with the panel token's secret replaced."""
    return DEMO_TEXT.replace(PANEL_HASH, str(digest_secret(ROTATED)))
BELL = '\n[devices.bell]\nkind = "switch"\noutput = { gpio = 24 }\ntimeout = 0.5\n'


def demo_with(old: str, new: str) -> str:
    assert old in DEMO_TEXT
    return DEMO_TEXT.replace(old, new)


# -- the plan, without hardware -------------------------------------------------------------------
def test_plan_sorts_devices_by_equality_of_their_configs() -> None:
    old = config.loads(DEMO_TEXT, "old.toml")
    new = config.loads(demo_with("timeout = 1.0", "timeout = 0.5") + BELL, "new.toml")
    plan = plan_reload(old, new)
    assert plan.kept == ("door",) and plan.changed == ("light",) and plan.added == ("bell",)
    assert plan.removed == () and not plan.access_changed and plan.restart_needed == ()


def test_plan_names_removed_devices_and_access_changes() -> None:
    old = config.loads(DEMO_TEXT, "old.toml")
    text = rotated_panel()[: DEMO_TEXT.index("# A light")]
    plan = plan_reload(old, config.loads(text, "new.toml"))
    assert plan.removed == ("light",) and plan.kept == ("door",) and plan.access_changed


def test_restart_only_settings_are_named_and_kept_at_their_running_values() -> None:
    old = config.loads(DEMO_TEXT, "old.toml")
    text = demo_with('listen = "127.0.0.1:8765"',
                     'listen = "0.0.0.0:9000"\nallowed_origins = ["https://panel.lan"]\nmax_frame_bytes = 4096')
    new = config.loads(text + '\n[gpio]\nfactory = "lgpio"\n', "new.toml")
    plan = plan_reload(old, new)
    assert plan.restart_needed == ("gpio_factory changed", "server.listen changed", "server.max_frame_bytes changed")
    assert plan.server_changed == ("server.allowed_origins",)
    assert plan.in_force.gpio_factory == "auto"
    assert (plan.in_force.server.host, plan.in_force.server.port) == ("127.0.0.1", 8765)
    assert plan.in_force.server.max_frame_bytes == old.server.max_frame_bytes
    assert plan.in_force.server.allowed_origins == ("https://panel.lan",)


# -- a running daemon ----------------------------------------------------------------------------
@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "pictl.toml"
    path.write_text(DEMO_TEXT)
    return path


@pytest.fixture
def demo_config(config_file: Path) -> Config:
    """The conftest ``daemon`` and ``admin`` fixtures, on a config file this test may rewrite."""
    return config.load(str(config_file))


def level(daemon: Daemon, pin: int) -> bool:
    assert daemon.plant is not None
    return bool(daemon.plant.gpio_factory.pin(pin).state)


async def test_valid_reload_keeps_unchanged_devices_and_rebuilds_changed_ones(
        daemon: Daemon, admin: Client, config_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    await admin.call("door.open")
    await admin.call("light.on")
    door, light = daemon.devices["door"], daemon.devices["light"]
    door_open = daemon.ctx.dispatcher.entry("door.open")
    config_file.write_text(demo_with("timeout = 1.0", "timeout = 0.5") + BELL)

    plan = await daemon.reload()

    assert plan is not None and plan.kept == ("door",)
    # The door was not touched: same object, still open, relay still energised, same methods.
    assert daemon.devices["door"] is door and daemon.ctx.dispatcher.entry("door.open") is door_open
    assert (await admin.call("door.state"))["state"] == "open" and level(daemon, 17) is True
    # The light was closed (output to its safe level) and built again from the new config.
    assert daemon.devices["light"] is not light and light.retired
    assert (await admin.call("light.state"))["state"] == "off" and level(daemon, 22) is False
    described = await admin.call("system.describe")
    assert described["devices"]["light"]["timeout"] == 0.5
    assert (await admin.call("light.on"))["evidence"]["source"] == "light.feedback"
    # The added bell is offered at once; the config in force is the new one.
    assert (await admin.call("bell.on"))["state"] == "on"
    assert list(daemon.devices) == ["door", "light", "bell"]
    assert daemon.config.devices["light"].timeout == 0.5
    assert "rebuilt: light; added: bell" in caplog.text


async def test_removed_device_is_closed_safe_and_its_methods_withdrawn(
        daemon: Daemon, admin: Client, config_file: Path) -> None:
    await admin.call("light.on")
    config_file.write_text(DEMO_TEXT[: DEMO_TEXT.index("# A light")])
    assert await daemon.reload() is not None
    assert level(daemon, 22) is False and "light" not in daemon.devices
    assert (await admin.error("light.on"))["code"] == -32601
    assert set((await admin.call("system.status"))["devices"]) == {"door"}


async def test_a_device_moved_to_other_pins_works_on_the_new_ones(
        daemon: Daemon, admin: Client, config_file: Path) -> None:
    await admin.call("door.open")
    config_file.write_text(demo_with("relay = { gpio = 17 }", "relay = { gpio = 5 }"))
    assert await daemon.reload() is not None
    assert level(daemon, 17) is False  # the old relay line was released safe
    assert (await admin.call("door.state"))["state"] == "closed"
    assert (await admin.call("door.open"))["state"] == "open" and level(daemon, 5) is True


async def test_invalid_reload_is_refused_and_the_old_config_stays_in_force(
        daemon: Daemon, admin: Client, config_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    await admin.call("door.open")
    before = daemon.config
    door = daemon.devices["door"]
    config_file.write_text(demo_with("relay = { gpio = 17 }", "relay = { gpio = 99 }") + "\n[bogus]\n")

    assert await daemon.reload() is None

    refused = [r.getMessage() for r in caplog.records if "reload refused" in r.getMessage()]
    assert len(refused) == 2  # one line per problem, each with FILE:LINE
    relay_line = DEMO_TEXT[: DEMO_TEXT.index("relay = { gpio = 17 }")].count("\n") + 1
    assert any(f"{config_file}:{relay_line}: devices.door.relay.gpio" in line for line in refused)
    assert daemon.config is before and daemon.devices["door"] is door
    assert (await admin.call("door.state"))["state"] == "open" and level(daemon, 17) is True


async def test_new_tokens_and_roles_apply_to_new_logins(daemon: Daemon, config_file: Path) -> None:
    config_file.write_text(rotated_panel())
    assert await daemon.reload() is not None
    with pytest.raises(InvalidStatus):
        async with open_client(daemon.url, "demo-panel"):
            pass
    async with open_client(daemon.url, ROTATED) as ws:
        panel = Client(ws)
        assert (await panel.call("door.state"))["state"] == "closed"
        await panel.close()


async def test_a_revoked_token_loses_its_open_connections_and_others_keep_theirs(
        daemon: Daemon, admin: Client, config_file: Path) -> None:
    async with open_client(daemon.url, "demo-panel") as ws:
        panel = Client(ws)
        assert (await panel.call("door.state"))["state"] == "closed"
        config_file.write_text(rotated_panel())  # the panel's secret is replaced
        assert await daemon.reload() is not None
        async with asyncio.timeout(5):
            await ws.wait_closed()
        assert ws.close_code == 1008 and "revoked" in (ws.close_reason or "")
        await panel.close()
    assert await admin.call("system.ping") == {"pong": True}  # an unchanged token keeps its link
    assert await daemon.reload() is not None  # the same file again: the admin link is left alone
    assert await admin.call("system.ping") == {"pong": True}


async def test_a_listen_change_says_a_restart_is_needed(
        config_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    config_file.write_text(demo_with('listen = "127.0.0.1:8765"', 'listen = "127.0.0.1:0"'))
    d = Daemon(config.load(str(config_file)), simulate=True, time_scale=TIME_SCALE)  # listening where the config says
    config_file.write_text(demo_with('listen = "127.0.0.1:8765"', 'listen = "127.0.0.1:8766"'))
    await d.start()
    try:
        plan = await d.reload()
    finally:
        await d.stop()
    assert plan is not None and plan.restart_needed == ("server.listen changed",)
    assert "server.listen changed: restart pictl to apply it" in caplog.text


async def test_reload_lets_an_action_in_progress_on_a_changed_device_finish(
        daemon: Daemon, admin: Client, config_file: Path) -> None:
    opening = asyncio.create_task(admin.call("door.open"))
    door = daemon.devices["door"]
    await door.relay.expect(lambda v: v is True).wait(2.0)  # the open is under way
    config_file.write_text(demo_with("timeout = 2.0", "timeout = 3.0"))
    assert await daemon.reload() is not None
    assert (await opening)["state"] == "open"  # confirmed before the door was closed for the rebuild
    assert daemon.devices["door"] is not door and daemon.devices["door"].config.timeout == 3.0


async def test_a_device_that_cannot_be_built_keeps_its_previous_config(
        daemon: Daemon, admin: Client, config_file: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    def build_or_fail(device_config: switch.SwitchConfig, wiring: kinds.Wiring) -> switch.Switch:
        if device_config.output.pin == 24:  # as a line held by another program would
            raise OSError("GPIO24 is busy")
        return switch.build(device_config, wiring)

    monkeypatch.setitem(kinds.REGISTRY, "switch", kinds.Kind(switch.read_config, build_or_fail))
    config_file.write_text(demo_with("output = { gpio = 22 }", "output = { gpio = 24 }"))
    assert await daemon.reload() is not None
    assert "light: cannot build it: GPIO24 is busy" in caplog.text
    assert "light: keeping its previous config" in caplog.text
    assert daemon.config.devices["light"].output.pin == 22
    assert (await admin.call("light.on"))["state"] == "on" and level(daemon, 22) is True


async def full_demo(tmp_path: Path) -> tuple[Path, str]:
    """The whole demo config (GPIO, Modbus and serial devices) in a file a test may rewrite."""
    path = tmp_path / "demo.toml"
    full = (ROOT / "config" / "demo.toml").read_text()
    path.write_text(full)
    return path, full


async def test_a_removed_sensor_takes_its_serial_port_and_thread_with_it(tmp_path: Path) -> None:
    from drivers.serial_sensor import SerialSensor

    path, full = await full_demo(tmp_path)
    daemon = sim_daemon(config.load(str(path)))
    await daemon.start()
    try:
        [port] = [b for b in daemon.buses if isinstance(b, SerialSensor)]

        def reader_alive() -> bool:
            return any(t.name == f"pictl {port.name}" and t.is_alive() for t in threading.enumerate())

        assert reader_alive()
        path.write_text(full[: full.index("[devices.hall_temp]")])
        plan = await daemon.reload()
        assert plan is not None and plan.removed == ("hall_temp",)
        assert not any(isinstance(b, SerialSensor) for b in daemon.buses)
        assert not reader_alive()
        assert daemon.ctx.dispatcher.entry("hall_temp.read") is None
    finally:
        await daemon.stop()


async def test_rebuilt_modbus_and_serial_devices_are_polled_and_simulated_again(tmp_path: Path) -> None:
    """A reload that rebuilds the fan keeps it following its coil (the link re-plans its polling as
    points come and go), and a rebuilt sensor gets a simulated terminal of its own again."""
    from controller.devices.base import Device
    from drivers.modbus import ModbusLink
    from tests.conftest import until

    path, full = await full_demo(tmp_path)
    daemon = sim_daemon(config.load(str(path)))
    await daemon.start()
    try:
        old_fan = daemon.devices["fan"]
        assert "fan.timeout = 1.0" not in full
        changed = full.replace('output = { modbus = "plant", coil = 0, device_id = 1 }\ntimeout = 1.0',
                               'output = { modbus = "plant", coil = 0, device_id = 1 }\ntimeout = 0.8')
        changed = changed.replace("stale_after = 2.0", "stale_after = 3.0")
        assert changed.count("timeout = 0.8") == 1 and "stale_after = 3.0" in changed
        path.write_text(changed)
        plan = await daemon.reload()
        assert plan is not None and set(plan.changed) == {"fan", "hall_temp"}

        fan: Device = daemon.devices["fan"]
        assert fan is not old_fan
        [link] = [b for b in daemon.buses if isinstance(b, ModbusLink)]
        assert [p.name for p in link.points] == ["fan.output"]  # the old fan's point left the plan
        assert [m.name for g in link.groups for m in g.members] == ["fan.output"]
        # Someone switches the fan at its controller: only polling can see that.
        assert daemon.plant is not None
        daemon.plant.modbus["plant"].devices.set(1, "coil", 0, 1)
        await until(lambda cb: fan.listen(lambda *_: cb()), lambda: fan.state()["state"] == "on")
        result = await fan.run("off", {}, 1.0)
        assert result["confirmed"] and result["state"] == "off"

        sensor = daemon.devices["hall_temp"]  # reads from its new terminal
        await until(lambda cb: sensor.listen(lambda *_: cb()), lambda: sensor.state()["value"] is not None)
        assert sensor.online
    finally:
        await daemon.stop()


def test_a_changed_modbus_link_is_named_as_in_the_file_and_needs_a_restart() -> None:
    full = (ROOT / "config" / "demo.toml").read_text()
    old = config.loads(full, "old.toml")
    new = config.loads(full.replace("timeout = 0.5", "timeout = 0.7", 1), "new.toml")
    assert old.modbus["plant"].timeout == 0.5 and new.modbus["plant"].timeout == 0.7
    plan = plan_reload(old, new)
    assert plan.restart_needed == ("modbus.plant changed",)
    assert plan.in_force.modbus["plant"].timeout == 0.5  # the running link keeps its settings
