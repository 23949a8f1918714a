"""What the MQTT bridge publishes, without a broker: discovery payloads (each kind's own entities
with what every entity shares), state and command payloads, outcomes, and the [mqtt] section
(README, *Home Assistant and MQTT*)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from controller.bridges.mqtt.discovery import EVENT_TYPES, Topics, discovery, outcome
from controller.devices.base import Device
from controller.devices.outward import UNKNOWN, BadCommand
from controller.service import configfile as config
from controller.service.daemon import Daemon
from controller.service.reload import plan_reload
from controller.settings.reader import ConfigError
from tests.conftest import DEMO

TOPICS = Topics("pictl", "pi01")
# The demo's four devices, and a setpoint and a two-value sensor beside them.
EXTRA = """
[devices.speed]
kind = "setpoint"
output = { modbus = "plant", holding = 3, device_id = 2, type = "int16", scale = 0.5 }
min = 0
max = 100
unit = "%"

[devices.meter]
kind = "sensor"
port = "/dev/ttyUSB7"
pattern = '^E=(?P<energy>[0-9.]+) R=(?P<ratio>[0-9.]+)$'
units = { energy = "kWh", ratio = "%" }
stale_after = 2.0
"""


@pytest.fixture
async def devices() -> AsyncIterator[dict[str, Device]]:
    daemon = Daemon(config.loads(DEMO.read_text() + EXTRA, str(DEMO)), simulate=True, host="127.0.0.1", port=0,
                    time_scale=0.1)
    await daemon.start()
    try:
        yield daemon.devices
    finally:
        await daemon.stop()


def announced(device: Device, prefix: str = "homeassistant") -> dict[str, dict]:
    return dict(discovery(prefix, TOPICS, device.name, device.ha_entities(), "9.9"))


async def test_a_door_is_a_cover_of_class_door_with_device_origin_and_two_level_availability(devices) -> None:
    configs = announced(devices["door"])
    assert set(configs) == {"homeassistant/cover/pi01/door/config", "homeassistant/event/pi01/door_command/config"}
    cover = configs["homeassistant/cover/pi01/door/config"]
    assert cover["unique_id"] == "pictl_pi01_door" and cover["device_class"] == "door"
    assert cover["device"] == {"identifiers": ["pictl_pi01"], "name": "pi01", "manufacturer": "pictl",
                               "model": "pictl hardware controller", "sw_version": "9.9"}
    assert cover["origin"]["name"] == "pictl"
    assert cover["availability"] == [
        {"topic": "pictl/pi01/availability", "payload_available": "online", "payload_not_available": "offline"},
        {"topic": "pictl/pi01/door/availability", "payload_available": "online", "payload_not_available": "offline"},
    ]
    assert cover["availability_mode"] == "all" and cover["optimistic"] is False
    assert cover["state_topic"] == "pictl/pi01/door/state" and cover["command_topic"] == "pictl/pi01/door/set"
    assert cover["json_attributes_topic"] == "pictl/pi01/door/attributes"
    assert (cover["payload_open"], cover["payload_close"], cover["payload_stop"]) == ("OPEN", "CLOSE", None)
    assert "object_id" not in cover  # deprecated in Home Assistant 2025.10
    event = configs["homeassistant/event/pi01/door_command/config"]
    assert event["state_topic"] == "pictl/pi01/door/event" and event["unique_id"] == "pictl_pi01_door_command"
    assert {"confirmed", "not_confirmed", "busy", "unavailable", "unauthorized"} <= set(event["event_types"])


async def test_switch_number_and_sensor_components(devices) -> None:
    switch = announced(devices["light"])["homeassistant/switch/pi01/light/config"]
    assert (switch["payload_on"], switch["state_on"], switch["unique_id"]) == ("ON", "ON", "pictl_pi01_light")
    number = announced(devices["speed"])["homeassistant/number/pi01/speed/config"]
    assert (number["min"], number["max"], number["step"], number["unit_of_measurement"]) == (0, 100, 0.5, "%")
    sensor_configs = announced(devices["hall_temp"])
    assert list(sensor_configs) == ["homeassistant/sensor/pi01/hall_temp/config"]  # no commands: no event entity
    sensor = sensor_configs["homeassistant/sensor/pi01/hall_temp/config"]
    assert (sensor["unit_of_measurement"], sensor["device_class"], sensor["state_class"]) == (
        "°C", "temperature", "measurement")
    assert "value_template" not in sensor and "command_topic" not in sensor


async def test_a_sensor_with_several_values_is_one_entity_per_value_and_unknown_units_get_no_class(devices) -> None:
    configs = announced(devices["meter"])
    energy = configs["homeassistant/sensor/pi01/meter_energy/config"]
    ratio = configs["homeassistant/sensor/pi01/meter_ratio/config"]
    assert energy["unique_id"] == "pictl_pi01_meter_energy" and energy["value_template"] == "{{ value_json.energy }}"
    assert energy["name"] == "meter energy"
    assert (energy["device_class"], energy["state_class"]) == ("energy", "total_increasing")
    assert "device_class" not in ratio and ratio["unit_of_measurement"] == "%"


async def test_discovery_prefix_is_used_as_given(devices) -> None:
    assert list(announced(devices["door"], prefix="ha")) == ["ha/cover/pi01/door/config",
                                                             "ha/event/pi01/door_command/config"]


@pytest.mark.parametrize(("device", "state", "payload"), [
    ("door", {"state": "open", "actuator": True}, "open"),
    ("door", {"state": "closed", "actuator": False}, "closed"),
    ("door", {"state": "moving", "actuator": True}, "opening"),
    ("door", {"state": "moving", "actuator": False}, "closing"),
    ("door", {"state": "unknown", "actuator": False}, UNKNOWN),
    ("light", {"state": "on"}, "ON"),
    ("light", {"state": "off"}, "OFF"),
    ("light", {"state": "unknown"}, UNKNOWN),
    ("speed", {"value": 42.5, "unit": "%"}, "42.5"),
    ("speed", {"value": None, "unit": "%"}, UNKNOWN),
    ("hall_temp", {"value": 21, "unit": "°C", "at": None}, "21"),
    ("hall_temp", {"value": float("nan"), "unit": "°C", "at": None}, UNKNOWN),
    ("meter", {"values": {"t": 1.5, "h": 40}, "units": {}, "at": None}, '{"t":1.5,"h":40}'),
])
async def test_state_payloads(devices, device: str, state: dict, payload: str) -> None:
    assert devices[device].mqtt_state(state) == payload
    (message,) = devices[device].mqtt_messages("state", state)
    assert (message.leaf, message.payload, message.retain) == ("state", payload, True)


async def test_commands_and_malformed_commands(devices) -> None:
    for device, text, expected in (("door", "OPEN", ("open", {})), ("door", "close", ("close", {})),
                                   ("light", "TOGGLE", ("toggle", {})), ("speed", "12.5", ("set", {"value": 12.5})),
                                   ("speed", "40", ("set", {"value": 40}))):
        assert devices[device].mqtt_command("set", text) == expected
    for device, text in (("door", "STOP"), ("door", ""), ("light", "1"), ("speed", "nan"), ("speed", "inf"),
                         ("speed", "ten"), ("hall_temp", "READ"), ("door", '{"x":1}')):
        with pytest.raises(BadCommand):
            devices[device].mqtt_command("set", text)


def test_outcomes_of_a_confirmed_and_a_failed_action() -> None:
    evidence = {"source": "door.contact", "value": "open", "at": "t"}
    ok = {"jsonrpc": "2.0", "id": 0, "result": {"device": "door", "action": "open", "state": "open", "changed": True,
                                                "confirmed": True, "elapsed_ms": 301.2, "evidence": evidence}}
    assert outcome("open", ok) == (
        {"action": "open", "confirmed": True, "changed": True, "elapsed_ms": 301.2, "evidence": evidence,
         "error": None},
        {"event_type": "confirmed", "action": "open"})
    error = {"code": -32002, "message": "door did not become open within the deadline",
             "data": {"device": "door", "expected": "open", "observed": "closed", "elapsed_ms": 2000.4,
                      "recovery": "actuator released; door is closed"}}
    attributes, event = outcome("open", {"jsonrpc": "2.0", "id": 0, "error": error})
    assert attributes == {"action": "open", "confirmed": False, "changed": None, "elapsed_ms": 2000.4,
                          "evidence": None, "error": error}
    assert event == {"event_type": "not_confirmed", "action": "open", "code": -32002}
    for code, name in ((-32003, "busy"), (-32004, "unavailable"), (-32001, "unauthorized"), (-32005, "rate_limited"),
                       (-32603, "internal_error"), (-1, "internal_error")):
        _, event = outcome("on", {"error": {"code": code, "message": "m"}})
        assert event["event_type"] == name and name in EVENT_TYPES


def test_command_topics_name_only_our_devices_and_command_leaves() -> None:
    assert TOPICS.command("pictl/pi01/door/set") == ("door", "set")
    assert TOPICS.command("pictl/pi01/blind/set_position") == ("blind", "set_position")
    for topic in ("pictl/pi02/door/set", "pictl/pi01/set", "pictl/pi01/a/b/set", "pictl/pi01/door/state",
                  "pictl/pi01/door/settings_x", "pictl/pi01//set"):
        assert TOPICS.command(topic) is None, topic


# -- the [mqtt] section -----------------------------------------------------------------------------
AUTOMATION = '\n[auth.roles.automation]\nallow = ["door.*"]\n'


def load(mqtt: str, extra: str = AUTOMATION) -> config.Config:
    return config.loads(DEMO.read_text() + extra + "\n[mqtt]\n" + mqtt, str(DEMO))


def test_the_demo_config_has_no_active_mqtt_section() -> None:
    assert config.load(str(DEMO)).mqtt is None


def test_an_mqtt_section_with_defaults(tmp_path) -> None:
    cfg = load('url = "mqtt://broker.lan"\nnode = "pi-01_a"\nrole = "automation"\n').mqtt
    assert cfg is not None
    assert (cfg.host, cfg.port, cfg.tls, cfg.topic_prefix, cfg.discovery_prefix) == (
        "broker.lan", 1883, False, "pictl", "homeassistant")
    secret = tmp_path / "mqtt.pass"
    secret.write_text("s3cret-pw\n")
    secret.chmod(0o600)
    cfg = load(f'url = "mqtts://broker.lan"\nnode = "n"\nrole = "automation"\nusername = "pi"\n'
               f'password_file = "{secret}"\ndiscovery_prefix = ""\n').mqtt
    assert cfg is not None and (cfg.port, cfg.tls, cfg.username, cfg.discovery_prefix) == (8883, True, "pi", "")
    assert cfg.password == "s3cret-pw"  # read at load, like every secret file
    assert "s3cret" not in repr(cfg)


def test_every_secret_file_is_read_one_way_mode_600_and_long_enough(tmp_path) -> None:
    """Token secrets, WAMP tickets and the MQTT password: the same checks, reported with FILE:LINE."""
    short, shared = tmp_path / "short", tmp_path / "shared"
    short.write_text("abc\n")
    short.chmod(0o600)
    shared.write_text("a-long-enough-secret-of-many-characters\n")
    shared.chmod(0o644)
    for path, why in ((short, "shorter than"), (shared, "readable by group or others: chmod 600 it"),
                      (tmp_path / "missing", "cannot read")):
        text = (DEMO.read_text() + AUTOMATION + f'\n[auth.tokens.file-token]\nrole = "automation"\n'
                f'secret_file = "{path}"\n[mqtt]\nurl = "mqtt://x"\nnode = "n"\nrole = "automation"\n'
                f'username = "u"\npassword_file = "{path}"\n'
                f'[wamp]\nurl = "ws://r/ws"\nrealm = "r"\nnode = "n"\nrole = "automation"\nauthid = "a"\n'
                f'ticket_file = "{path}"\n')
        with pytest.raises(ConfigError) as caught:
            config.loads(text, str(DEMO))
        problems = [str(p) for p in caught.value.problems]
        for key in ("auth.tokens.file-token.secret_file", "mqtt.password_file", "wamp.ticket_file"):
            assert [p for p in problems if f": {key}: " in p and why in p and f"{DEMO}:" in p], (key, problems)


@pytest.mark.parametrize(("mqtt", "message"), [
    ('url = "http://x"\nnode = "n"\nrole = "automation"\n', "mqtt.url: must look like"),
    ('url = "mqtt://u:pw@x"\nnode = "n"\nrole = "automation"\n', "mqtt.url: put no credentials"),
    ('url = "mqtt://x"\nnode = "a b"\nrole = "automation"\n', "mqtt.node: must be"),
    ('url = "mqtt://x"\nnode = "n"\nrole = "nobody"\n', "mqtt.role: no role 'nobody'"),
    ('url = "mqtt://x"\nnode = "n"\nrole = "automation"\ntopic_prefix = "a/#"\n', "mqtt.topic_prefix"),
    ('url = "mqtt://x"\nnode = "n"\nrole = "automation"\npassword = "pw"\n', "mqtt.password: unknown field"),
    ('url = "mqtt://x"\nnode = "n"\nrole = "automation"\nusername = "u"\npassword_file = "/nonexistent/p"\n',
     "mqtt.password_file: cannot read /nonexistent/p"),
    ('url = "mqtt://x"\nnode = "n"\n', "mqtt.role: missing required field"),
])
def test_mqtt_section_problems_name_the_line_and_field(mqtt: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(mqtt)
    text = str(caught.value)
    assert message in text and f"{DEMO}:" in text, text


def test_a_changed_mqtt_section_waits_for_a_restart_and_is_named() -> None:
    old = load('url = "mqtt://a"\nnode = "n"\nrole = "automation"\n')
    new = load('url = "mqtt://b"\nnode = "n"\nrole = "automation"\n')
    plan = plan_reload(old, new)
    assert "mqtt changed" in plan.restart_needed and plan.in_force.mqtt == old.mqtt
