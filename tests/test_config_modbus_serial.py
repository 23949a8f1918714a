"""Config for Modbus links and points, setpoints and serial sensors: typed values, and every
problem with its FILE:LINE and field. Line numbers are those of BASE, numbered in its comment."""

from __future__ import annotations

import pytest

from controller.devices.sensor import SensorConfig
from controller.devices.setpoint import SetpointConfig
from controller.devices.switch import SwitchConfig
from controller.service import configfile as config
from controller.settings.reader import ConfigError

BASE = """\
[modbus.plc]
transport = "tcp"
host = "192.0.2.10"
timeout = 0.5

[modbus.bus485]
transport = "rtu"
port = "/dev/serial/by-id/usb-FTDI-if00"
baudrate = 19200

[devices.fan]
kind = "switch"
output = { modbus = "plc", coil = 0, device_id = 1 }

[devices.speed]
kind = "setpoint"
output = { modbus = "bus485", holding = 3, device_id = 2, type = "int16", scale = 0.1 }
min = 0
max = 100

[devices.hall]
kind = "sensor"
port = "/dev/serial/by-id/usb-sensor"
pattern = 'T=(?P<temp>[0-9.]+) H=(?P<rh>[0-9]+)'
units = { temp = "°C", rh = "%" }
stale_after = 2.0
"""
#  1 [modbus.plc]          11 [devices.fan]          21 [devices.hall]
#  2 transport = "tcp"     12 kind = "switch"        22 kind = "sensor"
#  3 host = ...            13 output = { modbus ..   23 port = ...
#  4 timeout = 0.5         14                        24 pattern = ...
#  5                       15 [devices.speed]        25 units = { ... }
#  6 [modbus.bus485]       16 kind = "setpoint"      26 stale_after = 2.0
#  7 transport = "rtu"     17 output = { modbus ..
#  8 port = ...            18 min = 0
#  9 baudrate = 19200      19 max = 100
# 10                       20


def edit(old: str, new: str, text: str = BASE) -> str:
    assert text.count(old) == 1, f"{old!r} must occur once"
    return text.replace(old, new)


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as failed:
        config.loads(text, "site.toml")
    return [str(p) for p in failed.value.problems]


def test_base_is_valid_and_typed() -> None:
    cfg = config.loads(BASE, "site.toml")
    plc, bus = cfg.modbus["plc"], cfg.modbus["bus485"]
    assert (plc.transport, plc.host, plc.port, plc.timeout) == ("tcp", "192.0.2.10", 502, 0.5)
    assert (bus.transport, bus.port, bus.baudrate, bus.parity, bus.stopbits) == \
        ("rtu", "/dev/serial/by-id/usb-FTDI-if00", 19200, "E", 1)
    fan = cfg.devices["fan"]
    assert isinstance(fan, SwitchConfig) and fan.output.at.table == "coil" and fan.output.link == "plc"
    speed = cfg.devices["speed"]
    assert isinstance(speed, SetpointConfig) and speed.output.at.type == "int16"
    assert speed.tolerance == pytest.approx(0.05)  # half a register step by default
    hall = cfg.devices["hall"]
    assert isinstance(hall, SensorConfig) and hall.source.names == ("temp", "rh")
    assert hall.source.units == {"temp": "°C", "rh": "%"} and hall.source.stale_after == 2.0


@pytest.mark.parametrize(("old", "new", "expected"), [
    ('modbus = "plc", coil', 'modbus = "plx", coil',
     "site.toml:13: devices.fan.output.modbus: no Modbus link named 'plx' (links: bus485, plc; define [modbus.plx])"),
    ("coil = 0, device_id = 1", "coil = 65536, device_id = 1",
     "site.toml:13: devices.fan.output.coil: must be between 0 and 65535, got 65536"),
    ("coil = 0, device_id = 1", "coil = -1, device_id = 1",
     "site.toml:13: devices.fan.output.coil: must be between 0 and 65535, got -1"),
    ("holding = 3, device_id = 2, type = \"int16\"", "holding = 65535, device_id = 2, type = \"int32\"",
     "site.toml:17: devices.speed.output.holding: a int32 at 65535 runs past the last address 65535"),
    ("coil = 0, device_id = 1", "coil = 0, device_id = 300",
     "site.toml:13: devices.fan.output.device_id: must be between 0 and 255, got 300"),
    ("coil = 0, device_id = 1", "discrete = 0, device_id = 1",
     "site.toml:13: devices.fan.output: needs exactly one address key: coil = ADDRESS / holding = ADDRESS"),
    ("coil = 0, device_id = 1", "coil = 0, device_id = 1, scale = 2",
     "site.toml:13: devices.fan.output.scale: only for registers (holding, input), not a coil"),
    ('type = "int16"', 'type = "int64"',
     "site.toml:17: devices.speed.output.type: must be one of 'int16', 'uint16', 'int32', 'uint32', 'float32', "
     "'float64', got 'int64'"),
    ("pattern = 'T=(?P<temp>[0-9.]+) H=(?P<rh>[0-9]+)'", "pattern = 'T=([0-9.]+'",
     "site.toml:24: devices.hall.pattern: invalid regular expression: missing ), unterminated subpattern "
     "at position 2"),
    ("pattern = 'T=(?P<temp>[0-9.]+) H=(?P<rh>[0-9]+)'", "pattern = 'T=([0-9.]+)'",
     "site.toml:24: devices.hall.pattern: needs at least one named group, e.g. T=(?P<temp>-?[0-9.]+)"),
    ('units = { temp = "°C", rh = "%" }', 'units = { temp = "°C", rain = "mm" }',
     "site.toml:25: devices.hall.units.rain: no group named 'rain' in pattern"),
    ('transport = "tcp"', 'transport = "udp"',
     "site.toml:2: modbus.plc.transport: must be one of 'tcp', 'rtu', got 'udp'"),
    ("baudrate = 19200", "baudrate = 19200\nhost = \"x\"",
     "site.toml:10: modbus.bus485.host: not used with transport = 'rtu'"),
    ("timeout = 0.5", "timeout = 0.5\nretries = 3", "site.toml:5: modbus.plc.retries: unknown field"),
    ("max = 100", "max = 7000", "site.toml:19: devices.speed.max: does not fit the register: 7000 is 70000 in the "
     "register, outside int16 (-32768..32767)"),
    ("min = 0", "min = 200", "site.toml:19: devices.speed.max: must be >= min (200)"),
    ("stale_after = 2.0", "stale_after = 0", "site.toml:26: devices.hall.stale_after: must be > 0.0 and <= 86400.0, "
     "got 0"),
    ('port = "/dev/serial/by-id/usb-sensor"', "", 'site.toml:21: devices.hall: a sensor needs a source: '
     'port = "/dev/serial/by-id/...", or modbus = "LINK", or onewire = "28-..."'),
    ("stale_after = 2.0", "stale_after = 2.0\nrequest_interval = 5", "site.toml:27: devices.hall.request_interval: "
     "only meaningful with a request"),
])
def test_problems_name_the_line_and_field(old: str, new: str, expected: str) -> None:
    assert expected in problems(edit(old, new))


@pytest.mark.parametrize(("request_text", "sent"), [('"M\\r\\n"', b"M\r\n"), ("'M\\r\\n'", b"M\r\n"),
                                                   ('"\\u00b0"', "°".encode())])
def test_request_escapes(request_text: str, sent: bytes) -> None:
    text = edit("stale_after = 2.0", f"stale_after = 2.0\nrequest = {request_text}")
    assert config.loads(text).devices["hall"].source.request == sent


def test_request_with_a_bad_escape_is_a_problem_not_a_crash() -> None:
    text = edit("stale_after = 2.0", "stale_after = 2.0\nrequest = 'R\\x'")
    assert any(p.startswith("site.toml:27: devices.hall.request: bad escape sequence") for p in problems(text))


def test_a_switch_on_a_holding_register_is_rejected() -> None:
    text = edit("coil = 0, device_id = 1 }", "holding = 0, device_id = 1 }")
    assert problems(text) == ["site.toml:13: devices.fan.output: switches on and off: on Modbus that is a coil, "
                              "not a holding register"]


def test_two_address_keys_are_one_problem() -> None:
    text = edit("coil = 0, device_id = 1 }", 'coil = "x", holding = 0, device_id = 1 }')
    assert problems(text) == ["site.toml:13: devices.fan.output: needs exactly one address key: coil = ADDRESS / "
                              "holding = ADDRESS"]


def test_verify_is_read_with_its_on_and_off_values() -> None:
    text = edit("coil = 0, device_id = 1 }", "coil = 0, device_id = 1, verify = { holding = 7, on = 2, off = 0 } }")
    fan = config.loads(text).devices["fan"]
    assert fan.output.verify.table == "holding" and fan.output.verify.device_id == 1
    assert (fan.output.verify_on, fan.output.verify_off) == (2.0, 0.0)


def test_verify_on_an_input_point_is_rejected() -> None:
    text = edit('output = { modbus = "plc", coil = 0, device_id = 1 }',
                'output = { gpio = 5 }\nfeedback = { modbus = "plc", discrete = 0, verify = { coil = 1 } }')
    assert "site.toml:14: devices.fan.feedback.verify: only outputs are verified" in problems(text)


def test_check_config_accepts_the_demo() -> None:
    cfg = config.load("config/demo.toml")
    fan, link = cfg.devices["fan"], cfg.modbus[cfg.devices["fan"].output.link]
    assert fan.timeout == 1.0 and fan.output.at.table == "coil"
    assert (link.poll_interval, link.timeout, link.offline_after) == (0.5, 0.5, 2)
    assert cfg.devices["hall_temp"].source.stale_after == 2.0


def _hardware_snippets() -> list[str]:
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "hardware.md").read_text()
    return [b for b in re.findall(r"```toml\n(.*?)```", text, re.S) if "[devices." in b]


@pytest.mark.parametrize("snippet", _hardware_snippets())
def test_every_device_snippet_in_hardware_md_passes_check_config(snippet: str, tmp_path, capsys) -> None:
    from controller.service import cli

    path = tmp_path / "snippet.toml"
    path.write_text(snippet)
    assert cli.main(["check-config", str(path)]) == 0, capsys.readouterr().err


def test_hardware_md_covers_rs485_and_usb_serial() -> None:
    snippets = "\n".join(_hardware_snippets())
    assert 'transport = "rtu"' in snippets and "/dev/serial/by-id/" in snippets and 'kind = "sensor"' in snippets
