"""Inputs and meters seen from outside, on one simulated building: sim.input over a real WebSocket,
Home Assistant discovery and state through a real Mosquitto, Prometheus text checked by
prometheus_client's parser and by promtool."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from controller.service import configfile as config
from controller.service.daemon import Daemon
from tests.conftest import ADMIN, PANEL, ROOT, TIME_SCALE, Client, http_get, on_browser_loop, open_client, until
from tests.mosquitto import MOSQUITTO, Mosquitto
from tests.test_mqtt import Watcher
from tests.test_panel import needs_browser, open_panel, panel_url

if TYPE_CHECKING:
    from playwright.async_api import Browser

PROMTOOL = shutil.which("promtool")
MISSING = None if MOSQUITTO else "mosquitto is not installed (apt-get install mosquitto)"
if MISSING and os.environ.get("CI"):
    pytest.fail(f"MQTT tests cannot run: {MISSING}; .ci/run installs it", pytrace=False)

BUILDING = """
[auth.roles.admin]
allow = ["*"]

[auth.roles.panel]
allow = ["*.state", "system.*", "events.*"]

[auth.tokens.demo-admin]
role = "admin"
hash = "sha256$SwsdereqCkadn9zBR6X5dtJaeYbohnrV3F4KOwmVios"

[auth.tokens.demo-panel]
role = "panel"
hash = "sha256$1Kt3XLFs1TlvzwwP7Q5Gp518uMA2CBnr5cjPz8rKRHo"

[modbus.meters]
transport = "tcp"
host = "192.0.2.10"
timeout = 0.2
poll_interval = 0.05

[devices.bell]
kind = "input"
input = { gpio = 24 }
button = true
debounce_ms = 20
double_press_s = 0.1

[devices.window]
kind = "input"
input = { gpio = 25 }
on_when = "inactive"
device_class = "window"
debounce_ms = 20

[devices.meter]
kind = "sensor"
modbus = "meters"
max_gap = 4
values.voltage = { table = "input", register = 0, type = "float32", unit = "V", device_class = "voltage" }
values.power = { table = "input", register = 12, type = "float32", unit = "W", device_class = "power" }
values.energy = { table = "input", register = 342, type = "float32", unit = "kWh", device_class = "energy", \
state_class = "total_increasing" }
values.gain = { table = "holding", register = 0, type = "int16", scale = 0.1, unit = "dB" }

[devices.boiler_temp]
kind = "sensor"
onewire = "28-0316a2794eff"
interval = 0.05
"""


# One building per test, on the shared Chromium's event loop (tests/conftest.py), where its tests run.
pytestmark = on_browser_loop


@pytest_asyncio.fixture(loop_scope="session")
async def building(tmp_path: Path) -> AsyncIterator[tuple[Daemon, Mosquitto | None]]:
    broker = None
    text = BUILDING
    if MOSQUITTO:
        broker = Mosquitto(tmp_path)
        await broker.start()
        text += f'\n[mqtt]\nurl = "mqtt://127.0.0.1:{broker.port}"\nnode = "pi01"\nrole = "admin"\n'
    daemon = Daemon(config.loads(text, "building.toml"), simulate=True, host="127.0.0.1", port=0,
                    time_scale=TIME_SCALE)
    await daemon.start()
    try:
        yield daemon, broker
    finally:
        await daemon.stop()
        if broker is not None:
            await broker.stop()


async def press_once(admin: Client, daemon: Daemon) -> None:
    bell = daemon.devices["bell"]
    await admin.call("sim.input", {"device": "bell", "active": True, "bounces": 2})
    await until(bell.listen, lambda: bell.state()["state"] == "on", timeout=2.0)
    await admin.call("sim.input", {"device": "bell", "active": False})
    await until(bell.listen, lambda: bell.state()["press"] == "single", timeout=2.0)


@pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
async def test_home_assistant_sees_binary_sensors_a_button_event_and_each_meter_value(
        building: tuple[Daemon, Mosquitto | None]) -> None:
    daemon, broker = building
    assert broker is not None
    async with Watcher(broker.port) as ha, open_client(daemon.url, ADMIN) as ws:
        admin = Client(ws)
        bell = await ha.on("homeassistant/binary_sensor/pi01/bell/config")
        assert bell.json()["state_topic"] == "pictl/pi01/bell/state" \
            and bell.json()["payload_on"] == "ON" and "device_class" not in bell.json()
        window = (await ha.on("homeassistant/binary_sensor/pi01/window/config")).json()
        assert window["device_class"] == "window" and window["unique_id"] == "pictl_pi01_window"
        press = (await ha.on("homeassistant/event/pi01/bell_press/config")).json()
        assert press["device_class"] == "button" and press["event_types"] == ["single", "double", "long"]
        assert press["state_topic"] == "pictl/pi01/bell/press"
        energy = (await ha.on("homeassistant/sensor/pi01/meter_energy/config")).json()
        assert {k: energy[k] for k in ("device_class", "state_class", "unit_of_measurement", "value_template")} == {
            "device_class": "energy", "state_class": "total_increasing", "unit_of_measurement": "kWh",
            "value_template": "{{ value_json.energy }}"}  # what Home Assistant's Energy dashboard takes
        gain = (await ha.on("homeassistant/sensor/pi01/meter_gain/config")).json()
        assert gain["unit_of_measurement"] == "dB" and "device_class" not in gain
        boiler = (await ha.on("homeassistant/sensor/pi01/boiler_temp/config")).json()
        assert (boiler["device_class"], boiler["state_class"], boiler["unit_of_measurement"]) == \
            ("temperature", "measurement", "°C")
        state = await ha.wait(lambda m: m.topic == "pictl/pi01/meter/state" and "energy" in m.json())
        assert state.json()["energy"] >= 1234.5 and 0.8 < state.json()["gain"] < 1.2
        assert await ha.on("pictl/pi01/window/state", b"ON")  # nothing holds the reed: open
        mark = ha.mark()
        await press_once(admin, daemon)
        pressed = await ha.on("pictl/pi01/bell/press", since=mark)
        assert pressed.json() == {"event_type": "single"}
        assert ("pictl/pi01/bell/state", "ON") in ha.between(mark, ("pictl/pi01/bell/state",))
        await admin.close()
    async with Watcher(broker.port) as late:  # a Home Assistant that starts later: only what is retained
        await late.client.publish("pictl/marker", b"after the retained ones", qos=1)
        end = late.seen.index(await late.on("pictl/marker"))
        retained = {m.topic: m.payload for m in late.seen[:end]}
        assert retained["pictl/pi01/bell/state"] == b"OFF" and retained["pictl/pi01/window/state"] == b"ON"
        assert "homeassistant/event/pi01/bell_press/config" in retained
        assert "pictl/pi01/bell/press" not in retained  # a press happened once: never replayed


async def test_sim_input_is_for_admins_under_simulate_and_checks_its_params(
        building: tuple[Daemon, Mosquitto | None]) -> None:
    daemon, _ = building
    async with open_client(daemon.url, ADMIN) as ws, open_client(daemon.url, PANEL) as ws2:
        admin, panel = Client(ws), Client(ws2)
        assert (await panel.error("sim.input", {"device": "bell", "active": True}))["code"] == -32001
        for params, field in [({"device": "bell", "active": 1}, "active"),
                              ({"device": "nope", "active": True}, "device"),
                              ({"device": "bell", "active": True, "bounces": 99}, "bounces"),
                              ({"device": "meter", "active": True}, "device")]:
            error = await admin.error("sim.input", params)
            assert error["code"] == -32602 and error["data"]["param"] == field, error
        assert (await admin.error("sim.input", {"device": "bell", "active": True, "hold": 1}))["code"] == -32602
        await admin.call("events.subscribe", {"topics": ["bell.*"]})
        await press_once(admin, daemon)
        topics = []
        async with asyncio.timeout(2.0):
            while not topics or topics[-1][0] != "bell.press":
                message = await admin.other.get()
                topics.append((message["params"]["topic"], message["params"]["data"]))
        assert [t for t, _ in topics] == ["bell.state", "bell.state", "bell.press"]
        assert topics[-1][1] == {"press": "single"}
        described = (await admin.call("system.describe"))["devices"]
        assert described["bell"]["actions"] == {} and described["bell"]["panel"]["facts"][0]["field"] == "last_press"
        await admin.close()
        await panel.close()


async def test_prometheus_exports_inputs_and_every_sensor_value_in_its_base_unit(
        building: tuple[Daemon, Mosquitto | None]) -> None:
    daemon, _ = building
    meter, boiler = daemon.devices["meter"], daemon.devices["boiler_temp"]
    await until(boiler.listen, lambda: boiler.state()["value"] is not None, timeout=3.0)
    await until(meter.listen, lambda: meter.state()["values"]["energy"] is not None, timeout=3.0)
    async with open_client(daemon.url, ADMIN) as ws:
        admin = Client(ws)
        await press_once(admin, daemon)
        await admin.close()
    status, _, body = await http_get(daemon, "/metrics")
    assert status == 200
    text = body.decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    reading = meter.state()["values"]
    assert value("pictl_sensor_energy_joules", device="meter", value="energy") == \
        pytest.approx(reading["energy"] * 3.6e6, rel=1e-3)  # kWh in joules: the energy meter may tick meanwhile
    assert 220 < value("pictl_sensor_voltage_volts", device="meter", value="voltage") < 240
    assert 0.8 < value("pictl_sensor_reading", device="meter", value="gain", unit="dB") < 1.2  # no metric for dB
    assert 40 < value("pictl_sensor_temperature_celsius", device="boiler_temp", value="") < 50
    assert value("pictl_sensor_value", device="boiler_temp") == \
        value("pictl_sensor_temperature_celsius", device="boiler_temp", value="")
    assert value("pictl_device_on", device="window") == 1.0 and value("pictl_device_on", device="bell") == 0.0
    assert value("pictl_input_presses_total", device="bell", press="single") == 1.0
    assert value("pictl_device_events_total", device="bell", event="press") == 1.0
    if PROMTOOL:
        lint = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True, timeout=30)
        assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()
    elif os.environ.get("CI"):
        pytest.fail("promtool missing: .ci/run installs the Debian package prometheus")
    assert json.dumps(reading)  # (a reading never holds NaN: it would not be valid JSON for the panel)


@needs_browser
async def test_the_panel_shows_inputs_with_their_last_press_and_meters_with_units(
        building: tuple[Daemon, Mosquitto | None], browser: Browser) -> None:
    daemon, _ = building
    panel = await open_panel(browser, panel_url(daemon), token=ADMIN)  # 800x480, a 7" screen
    await panel.live()
    await panel.state("bell", "off")
    await panel.state("window", "on")
    meter = panel.tile("meter")
    await panel.page.wait_for_selector(f'{meter} .value dl.values dd:has-text("kWh")', timeout=5000)
    rows = await panel.page.eval_on_selector_all(f"{meter} .value dl.values > *", "els => els.map(e => e.textContent)")
    assert rows[0::2] == ["Voltage", "Power", "Energy", "Gain"]
    assert [r.split()[-1] for r in rows[1::2]] == ["V", "W", "kWh", "dB"]
    await panel.page.wait_for_selector(f'{panel.tile("boiler_temp")} .value:has-text("°C")', timeout=5000)
    async with open_client(daemon.url, ADMIN) as ws:
        admin = Client(ws)
        await press_once(admin, daemon)
        await admin.close()
    await panel.page.wait_for_selector(f'{panel.tile("bell")} .facts dd:has-text("Single")', timeout=5000)
    assert "ago" in await panel.page.locator(f'{panel.tile("bell")} .facts dd').first.inner_text()  # last press
    assert await panel.page.locator(f'{panel.tile("bell")} button').count() == 0  # read-only: nothing to press
    assert await panel.page.evaluate("document.scrollingElement.scrollHeight <= innerHeight")
    if os.environ.get("PICTL_PANEL_SCREENSHOT"):
        await panel.page.screenshot(path=str(ROOT / "docs" / "panel-inputs-meters-800x480.png"))
    assert panel.errors == []
