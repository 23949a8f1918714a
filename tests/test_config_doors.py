"""The door kinds' config (lock, garage, cover): every mistake as FILE:LINE: field: message.

Pure: no daemon. Line numbers are those of DOORS appended to HEAD (10 lines), numbered below.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.devices.cover import CoverConfig
from controller.devices.garage import GarageConfig
from controller.devices.lock import LockConfig
from controller.service import configfile as config
from drivers.gpio import GpioInputSpec, GpioOutputSpec
from tests.doors import HEAD
from tests.test_config import assert_problem

ROOT = Path(__file__).resolve().parent.parent

DOORS = HEAD + """\
[devices.entrance]
kind = "lock"
strike = { gpio = 17 }
monitor = { gpio = 27, pull = "up" }
door_contact = { gpio = 22, pull = "up" }

[devices.garage]
kind = "garage"
pulse = { gpio = 23 }
closed_contact = { gpio = 24, pull = "up" }
open_contact = { gpio = 25, pull = "up" }
travel_s = 12.0

[devices.blind]
kind = "cover"
up = { gpio = 5 }
down = { gpio = 6 }
open_endstop = { gpio = 13, pull = "up" }
closed_endstop = { gpio = 19, pull = "up" }
travel_s = 20.0
"""
# 11 [devices.entrance]      17 [devices.garage]          24 [devices.blind]
# 12 kind = "lock"           18 kind = "garage"           25 kind = "cover"
# 13 strike = ...            19 pulse = ...               26 up = { gpio = 5 }
# 14 monitor = ...           20 closed_contact = ...      27 down = { gpio = 6 }
# 15 door_contact = ...      21 open_contact = ...        28 open_endstop = ...
#                            22 travel_s = 12.0           29 closed_endstop = ...
#                                                         30 travel_s = 20.0


def edit(old: str, new: str) -> str:
    assert DOORS.count(old) == 1, f"{old!r} must occur once"
    return DOORS.replace(old, new)


def test_the_doors_load_typed_with_their_defaults() -> None:
    cfg = config.loads(DOORS, "test.toml")
    lock, garage, cover = cfg.devices["entrance"], cfg.devices["garage"], cfg.devices["blind"]
    assert isinstance(lock, LockConfig) and isinstance(garage, GarageConfig) and isinstance(cover, CoverConfig)
    assert lock.strike == GpioOutputSpec(pin=17, active_high=True) and lock.unlock_energised is True
    assert lock.monitor == GpioInputSpec(pin=27, pull="up", active_high=None, debounce_s=None)
    assert (lock.hold_s, lock.held_open_s, lock.timeout) == (5.0, 30.0, 1.0)
    assert (garage.pulse_s, garage.start_s, garage.max_pulses) == (0.5, 1.0, 3)
    assert garage.timeout >= garage.pulse_s + garage.start_s + 1.5 * garage.travel_s  # room for one whole run
    assert cover.reverse_delay_s == 0.5 and cover.timeout >= 0.5 + 1.5 * 20.0
    assert set(cover.specs()) == {"up", "down", "open_endstop", "closed_endstop"}


def test_optional_points_may_be_left_out() -> None:
    text = edit('monitor = { gpio = 27, pull = "up" }\n', "").replace('open_endstop = { gpio = 13, pull = "up" }\n', "")
    cfg = config.loads(text.replace('open_contact = { gpio = 25, pull = "up" }\n', ""), "test.toml")
    assert cfg.devices["entrance"].monitor is None
    assert cfg.devices["garage"].open_contact is None and cfg.devices["garage"].closed_contact is not None
    assert set(cfg.devices["blind"].specs()) == {"up", "down", "closed_endstop"}


@pytest.mark.parametrize(("old", "new", "line", "field", "phrase"), [
    ("travel_s = 20.0\n", "", 24, "devices.blind.travel_s", "missing required field"),
    ("down = { gpio = 6 }", "down = { gpio = 5 }", 27, "devices.blind.down.gpio",
     "GPIO 5 is already used by devices.blind.up.gpio"),
    ("travel_s = 20.0\n", "travel_s = 20.0\ntimeout = 10.0\n", 31, "devices.blind.timeout",
     "must be at least reverse_delay_s + 1.5 x travel_s (30.5 s)"),
    ("travel_s = 20.0\n", "travel_s = 20.0\nreverse_delay_s = -0.5\n", 31, "devices.blind.reverse_delay_s",
     "must be >= 0.0"),
    ("travel_s = 20.0\n", "travel_s = 0\n", 30, "devices.blind.travel_s", "must be > 0.0"),
    ("up = { gpio = 5 }", 'up = { gpio = 5, pull = "up" }', 26, "devices.blind.up.pull", "unknown field"),
    ('closed_contact = { gpio = 24, pull = "up" }\nopen_contact = { gpio = 25, pull = "up" }\n', "", 17,
     "devices.garage", "a garage needs a limit contact: closed_contact, open_contact, or both"),
    ("travel_s = 12.0\n", "travel_s = 12.0\nmax_pulses = 0\n", 23, "devices.garage.max_pulses",
     "must be between 1 and 10"),
    ("travel_s = 12.0\n", "", 17, "devices.garage.travel_s", "missing required field"),
    ("travel_s = 12.0\n", "travel_s = 12.0\ntimeout = 5.0\n", 23, "devices.garage.timeout",
     "must be at least pulse_s + start_s + 1.5 x travel_s (19.5 s)"),
    ("pulse = { gpio = 23 }", "pulse = { gpio = 24 }", 20, "devices.garage.closed_contact.gpio",
     "GPIO 24 is already used by devices.garage.pulse.gpio"),
    ('strike = { gpio = 17 }', 'strike = { gpio = 17 }\nunlock_when = "magnetic"', 14,
     "devices.entrance.unlock_when", "must be one of 'energised', 'released'"),
    ('strike = { gpio = 17 }', 'strike = { gpio = 17 }\nhold_s = 0', 14, "devices.entrance.hold_s", "must be > 0.0"),
    ('strike = { gpio = 17 }', 'strike = { gpio = 17 }\nheld_open = 10', 14, "devices.entrance.held_open",
     "unknown field (did you mean held_open_s?)"),
    ('strike = { gpio = 17 }\n', "", 11, "devices.entrance.strike", "missing required field"),
    ('monitor = { gpio = 27, pull = "up" }', 'monitor = { gpio = 27, pull = "sideways" }', 14,
     "devices.entrance.monitor.pull", "must be one of 'up', 'down', 'none'"),
])
def test_each_mistake_is_one_problem_at_its_line(old: str, new: str, line: int, field: str, phrase: str) -> None:
    assert_problem(edit(old, new), line, field, phrase)


def test_building_toml_holds_the_doors_as_the_contract_gives_them() -> None:
    """README "The building demo": the entrance lock, the garage opener and the blind, with the demo's timings."""
    cfg = config.load(str(ROOT / "config" / "building.toml"))
    lock, garage, blind = cfg.devices["entrance"], cfg.devices["garage"], cfg.devices["blind"]
    assert (lock.kind, garage.kind, blind.kind) == ("lock", "garage", "cover")
    assert lock.monitor is not None and lock.door_contact is not None and lock.unlock_energised
    assert garage.closed_contact is not None and garage.open_contact is not None and garage.travel_s == 1.0
    assert blind.open_endstop is not None and blind.closed_endstop is not None
    assert (blind.travel_s, blind.reverse_delay_s) == (2.0, 0.5)
    for role in ("entrance.*", "garage.*", "blind.*"):
        assert role in cfg.roles["panel"].allow


def test_relays_on_the_same_modbus_coil_are_one_problem() -> None:
    """GPIO lines are claimed once per config (the problem above); a coil is caught by the cover itself."""
    text = edit("up = { gpio = 5 }\ndown = { gpio = 6 }",
                'up = { modbus = "plc", coil = 1 }\ndown = { modbus = "plc", coil = 1 }')
    text += '\n[modbus.plc]\ntransport = "tcp"\nhost = "127.0.0.1"\nport = 502\n'
    assert_problem(text, 27, "devices.blind.down", "must be another output than up")
