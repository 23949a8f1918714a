"""The input kind on simulated GPIO lines: debounce and press gestures timed on the line itself, a
contact with its Home Assistant class, and the config of inputs and of every sensor source."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from controller.devices.input import Input, InputConfig
from controller.devices.sensor import SensorConfig
from controller.service import configfile as config
from controller.service.daemon import Daemon
from controller.settings.reader import ConfigError
from tests.conftest import ROOT, until

INPUTS = """
[devices.bell]
kind = "input"
input = { gpio = 24, pull = "up" }
button = true
debounce_ms = 50
long_press_s = 0.4
double_press_s = 0.8

[devices.window]
kind = "input"
input = { gpio = 25, pull = "up" }
on_when = "inactive"
device_class = "window"
debounce_ms = 50
"""


@pytest.fixture
async def daemon() -> AsyncIterator[Daemon]:
    d = Daemon(config.loads(INPUTS, "inputs.toml"), simulate=True, host="127.0.0.1", port=0, time_scale=0.1)
    await d.start()
    try:
        yield d
    finally:
        await d.stop()


class Recorder:
    """Every event of one device, in order."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self.events: list[tuple[str, dict[str, Any]]] = []
        device.listen(lambda d, what, data: self.events.append((what, data)))

    def of(self, what: str) -> list[dict[str, Any]]:
        return [data for w, data in self.events if w == what]

    @property
    def levels(self) -> list[str]:
        """The state word of each state event, repeats (a press noted in the state) folded."""
        out: list[str] = []
        for data in self.of("state"):
            if not out or out[-1] != data["state"]:
                out.append(data["state"])
        return out

    async def until(self, check: Any, timeout: float = 3.0) -> None:
        await until(self.device.listen, check, timeout)


class Finger(threading.Thread):
    """A hand on the button, on a thread of its own as a real one is: it keeps its timing whatever the
    daemon's loop is doing. *edges* are (seconds from start, level), each chattering *bounces* times
    (an edge every 0.5 ms) before it settles."""

    def __init__(self, plant: Any, device: str, edges: list[tuple[float, bool]], bounces: int = 3) -> None:
        super().__init__(daemon=True)
        self.plant, self.device, self.edges, self.bounces = plant, device, edges, bounces
        self.failed: BaseException | None = None

    @classmethod
    def pressing(cls, plant: Any, presses: list[tuple[float, float]], bounces: int = 3) -> Finger:
        """Presses of the bell: (start, held for), in seconds from now."""
        return cls(plant, "bell", sorted(e for at, hold in presses for e in ((at, True), (at + hold, False))), bounces)

    def run(self) -> None:
        start, paced = time.monotonic(), threading.Event()
        try:
            for at, level in self.edges:
                paced.wait(max(0.0, start + at - time.monotonic()))
                for i in range(2 * self.bounces + 1):  # level, the other, ... level
                    self.plant.set_input(self.device, level if i % 2 == 0 else not level)
                    paced.wait(0.0005)
        except BaseException as exc:  # seen by the test, not lost in a thread
            self.failed = exc


async def test_bounces_and_a_glitch_publish_nothing_and_each_gesture_gives_exactly_one_press(
        daemon: Daemon) -> None:
    plant, bell = daemon.plant, daemon.devices["bell"]
    assert plant is not None and isinstance(bell, Input) and bell.state()["state"] == "off"
    seen = Recorder(bell)
    # A 5 ms spike (shorter than the 50 ms debounce), then one short press.
    Finger(plant, "bell", [(0.0, True), (0.005, False), (0.03, True), (0.15, False)], bounces=0).start()
    await seen.until(lambda: seen.of("press"))
    assert seen.levels == ["on", "off"]  # the spike never showed
    # Two short presses 0.25 s apart (inside the 0.8 s double-press window), then one held 0.7 s
    # (0.3 s past a long press), each edge chattering.
    Finger.pressing(plant, [(0.0, 0.15), (0.4, 0.15)]).start()
    await seen.until(lambda: len(seen.of("press")) == 2)
    Finger.pressing(plant, [(0.0, 0.7)]).start()
    await seen.until(lambda: len(seen.of("press")) == 3 and bell.state()["state"] == "off")
    assert [p["press"] for p in seen.of("press")] == ["single", "double", "long"]
    assert seen.levels == ["on", "off"] * 4  # every chatter folded into one change per edge
    assert all(data["cause"] == "external" for data in seen.of("state"))
    state = bell.state()
    assert state["press"] == "long" and state["last_press"] is not None


# The event loop stops for a while (a long collection, a busy machine) while the finger goes on: the
# edges wait in the loop's queue and come in a burst; each is timed by when the driver saw it.
@pytest.mark.parametrize(("presses", "stall", "gesture"), [
    ([(0.0, 0.15), (0.4, 0.15)], (0.3, 0.3), "double"),  # the whole second press happens during the stall
    ([(0.0, 0.15), (0.4, 0.15)], (0.3, 0.7), "double"),  # and the double window ends in it too
    ([(0.0, 0.6)], (0.1, 0.7), "long"),  # pressed and released during one stall: still held 0.6 s
    ([(0.0, 0.15)], (0.5, 0.7), "single"),  # the window ends in the stall with no second press
], ids=["second-press-in-stall", "window-ends-in-stall", "long-press-in-stall", "single-window-in-stall"])
async def test_presses_made_while_the_loop_stalls_are_read_as_the_finger_made_them(
        daemon: Daemon, presses: list[tuple[float, float]], stall: tuple[float, float], gesture: str) -> None:
    plant, bell = daemon.plant, daemon.devices["bell"]
    assert plant is not None and isinstance(bell, Input)
    seen = Recorder(bell)
    finger = Finger.pressing(plant, presses)
    asyncio.get_running_loop().call_later(stall[0], time.sleep, stall[1])  # blocks the loop, as a stall does
    finger.start()
    await seen.until(lambda: len(seen.of("press")) == 1 and bell.state()["state"] == "off")
    finger.join(2)
    assert finger.failed is None and not finger.is_alive()
    assert [p["press"] for p in seen.of("press")] == [gesture]
    assert bell._presses is not None and bell._presses._timer is None  # nothing left that could add a press
    assert seen.levels == ["on", "off"] * len(presses)


async def test_the_line_read_again_during_its_debounce_does_not_start_it_over(daemon: Daemon) -> None:
    plant, bell = daemon.plant, daemon.devices["bell"]
    assert plant is not None and isinstance(bell, Input)
    seen = Recorder(bell)
    plant.set_input("bell", True)
    pressed = time.monotonic()
    while bell.state()["state"] == "off" and time.monotonic() - pressed < 1.0:  # 20x the 50 ms debounce
        await bell.point.refresh()  # the same level again, as a poll or a reconnect reads it
        await asyncio.sleep(0.01)  # the re-reads' pace (the stimulus), every 10 ms
    assert seen.levels == ["on"], "re-reading the line every 10 ms kept the 50 ms debounce from ending"


async def test_a_window_contact_reads_open_when_its_line_is_released(daemon: Daemon) -> None:
    plant, window = daemon.plant, daemon.devices["window"]
    assert plant is not None and isinstance(window, Input)
    assert isinstance(window.config, InputConfig) and window.config.device_class == "window"
    assert window.state() == {"state": "on", "since": window.state()["since"]}  # nothing holds the reed: open
    seen = Recorder(window)
    plant.set_input("window", True, bounces=5)  # shut: the reed pulls the line low
    await seen.until(lambda: window.state()["state"] == "off")
    plant.set_input("window", False)
    await seen.until(lambda: window.state()["state"] == "on")
    assert seen.levels == ["off", "on"] and seen.of("press") == []
    with pytest.raises(ValueError, match="no simulated input line"):
        plant.set_input("nothing", True)


# -- config ---------------------------------------------------------------------------------------
def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as failed:
        config.loads(text, "site.toml")
    return [str(p).split(": ", 1)[1] for p in failed.value.problems]


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("long_press_s = 0.4", "", None),
    ("button = true\n", "", "devices.bell.long_press_s: only for a button (button = true)"),
    ('device_class = "window"', 'device_class = "doorbell"', "devices.window.device_class: must be one of"),
    ("debounce_ms = 50\nlong", "debounce_ms = -1\nlong", "devices.bell.debounce_ms: must be >= 0.0"),
    ('input = { gpio = 25, pull = "up" }', 'input = { gpio = 24, pull = "up" }',
     "devices.window.input.gpio: GPIO 24 is already used by devices.bell.input.gpio"),
])
def test_input_config(old: str, new: str, expected: str | None) -> None:
    assert INPUTS.count(old) == 1
    text = INPUTS.replace(old, new)
    if expected is None:
        assert config.loads(text).devices["bell"].long_press_s == 0.8  # type: ignore[attr-defined]
    else:
        assert any(p.startswith(expected) for p in problems(text)), problems(text)


SOURCES = """
[modbus.meters]
transport = "tcp"
host = "192.0.2.10"

[devices.meter]
kind = "sensor"
modbus = "meters"
values.energy = { table = "input", register = 342, type = "float32", unit = "kWh", device_class = "energy", \
state_class = "total_increasing" }
values.power = { table = "input", register = 12, type = "float32", unit = "W" }

[devices.boiler]
kind = "sensor"
onewire = "28-0316a2794eff"
"""


@pytest.mark.parametrize(("old", "new", "expected"), [
    ('unit = "kWh"', 'unit = "kwh"', "devices.meter.values.energy.unit: Home Assistant's energy class takes Wh, kWh"),
    ('state_class = "total_increasing"', 'state_class = "measurement"',
     "devices.meter.values.energy.state_class: energy accumulates"),
    ('device_class = "energy"', 'device_class = "energie"', "devices.meter.values.energy.device_class: not one of"),
    ("register = 12", "register = 343", "devices.meter.values.power: its registers overlap those of 'energy'"),
    ('table = "input", register = 12', "register = 12", "devices.meter.values.power.table: missing required field"),
    ('type = "float32", unit = "W"', 'type = "float64", word_order = "middle"',
     "devices.meter.values.power.word_order: must be one of 'big', 'little'"),
    ('modbus = "meters"', 'modbus = "meters"\nport = "/dev/ttyUSB0"', "devices.meter.modbus: a sensor has one source"),
    ('onewire = "28-0316a2794eff"', 'onewire = "28-0316A2794EFF"', "devices.boiler.onewire: a thermometer's id"),
    ('onewire = "28-0316a2794eff"', 'onewire = "28-0316a2794eff"\ninterval = 10\nstale_after = 5',
     "devices.boiler.stale_after: must be longer than interval (10 s)"),
])
def test_sensor_source_config(old: str, new: str, expected: str) -> None:
    cfg = config.loads(SOURCES)
    meter, boiler = cfg.devices["meter"], cfg.devices["boiler"]
    assert isinstance(meter, SensorConfig) and list(meter.quantities) == ["energy", "power"]
    assert isinstance(boiler, SensorConfig) and boiler.source.interval == 5.0  # type: ignore[attr-defined]
    assert SOURCES.count(old) == 1
    assert any(p.startswith(expected) for p in problems(SOURCES.replace(old, new))), problems(SOURCES.replace(old, new))


def test_the_building_has_its_inputs_and_meters() -> None:
    cfg = config.load(str(ROOT / "config" / "building.toml"))
    kinds = {name: d.kind for name, d in cfg.devices.items()}
    assert {k: kinds.get(k) for k in ("bell", "window", "meter", "boiler_temp")} == \
        {"bell": "input", "window": "input", "meter": "sensor", "boiler_temp": "sensor"}
    meter = cfg.devices["meter"]
    assert isinstance(meter, SensorConfig)
    assert meter.quantities["energy"].state_class == "total_increasing" and meter.quantities["energy"].unit == "kWh"
