"""An input: a button, a contact, a motion or leak detector (a GPIO line or a Modbus discrete input).

Read-only. The line is debounced here, in the same way whatever bus carries
it: a change counts once the line has stayed at its new level for
``debounce_ms`` (a contact that chatters for a few milliseconds, or a spike
shorter than that, publishes nothing). Every change that counts is a
``<name>.state`` event (``cause: "external"``).

With ``button = true`` the debounced presses are read as gestures, each giving
exactly one ``<name>.press`` event, ``{"press": "single" | "double" | "long"}``:

- held for ``long_press_s`` or more: ``long``, as soon as it has been held that long;
- released sooner, and pressed again within ``double_press_s``: ``double`` (when the
  second press ends, or once it has been held ``long_press_s``);
- released sooner, and not pressed again within ``double_press_s``: ``single``.

Every duration (the debounce, a press, the gap between two) is measured
between the times the driver saw the edges (stamped on its own thread), not
when the event loop got to them: a loop that stalls for a moment (a long
garbage collection, a busy machine) still reads the presses the finger made.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from controller.devices.base import Device
from controller.devices.outward import UNKNOWN, HaEntity, MqttMessage
from controller.devices.wiring import Wiring
from controller.settings.devices import DeviceConfig, InputSpec, Loader
from controller.settings.reader import Table
from controller.wire.clock import iso
from drivers.base import InputPoint, Observation, PointSpec

# Home Assistant's binary-sensor classes (what "on" means: open, motion detected, moisture...).
HA_BINARY_CLASSES = ("battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door", "garage_door",
                     "gas", "heat", "light", "lock", "moisture", "motion", "moving", "occupancy", "opening", "plug",
                     "power", "presence", "problem", "running", "safety", "smoke", "sound", "tamper", "update",
                     "vibration", "window")
PRESSES = ("single", "double", "long")


@dataclass(frozen=True)
class InputConfig(DeviceConfig):
    input: InputSpec  # the line (GPIO, or a Modbus discrete input)
    on_when_active: bool  # does an active line mean "on" (pressed, open, motion)?
    debounce_s: float  # a change counts once the line has held its new level this long
    button: bool  # read presses as single/double/long gestures
    long_press_s: float  # held this long: a long press
    double_press_s: float  # a second press within this long after the first: a double press
    device_class: str | None  # Home Assistant's binary-sensor class, or None

    def specs(self) -> dict[str, PointSpec]:
        return {"input": self.input}


def read_config(name: str, t: Table, loader: Loader) -> InputConfig | None:
    common = loader.common(name, t, default_timeout=1.0)
    point = loader.input_point(t, "input")
    on_when = t.string("on_when", default="active", choices=("active", "inactive"))
    debounce_ms = t.number("debounce_ms", default=50.0, high=10_000.0, low_inclusive=True)
    button = t.boolean("button", default=False)
    long_press_s = t.number("long_press_s", default=0.8, high=60.0)
    double_press_s = t.number("double_press_s", default=0.4, high=10.0)
    device_class = t.string("device_class", default=None, choices=HA_BINARY_CLASSES)
    if not button:
        for key in ("long_press_s", "double_press_s"):
            if t.has(key):
                t.problem(key, "only for a button (button = true)")
    if point is None or None in common.values() or None in (on_when, debounce_ms, button, long_press_s,
                                                               double_press_s):
        return None
    return InputConfig(**common, input=point, on_when_active=on_when == "active", debounce_s=debounce_ms / 1000.0,
                       button=button, long_press_s=long_press_s, double_press_s=double_press_s,
                       device_class=device_class)


class Presses:
    """Debounced press and release edges in, one gesture (single, double, long) out per press sequence.

    Every edge comes with the time it happened on the line (``time.monotonic()``, stamped by the
    driver's thread), and durations are measured between those times, not by when the loop got to
    them: after a stall of the event loop (a long collection, a busy machine) the edges that waited
    are still timed as the finger made them. A timer that fires while the edge that decides it is
    still inside its debounce (*pending*) looks again *recheck_s* later instead of deciding.
    """

    def __init__(self, long_s: float, double_s: float, emit: Callable[[str], None],
                 pending: Callable[[bool], float | None], recheck_s: float) -> None:
        self.long_s = long_s
        self.double_s = double_s
        self.emit = emit  # called with "single", "double" or "long"
        self.pending = pending  # the line's time of a press (True) or release (False) still being debounced
        self.recheck_s = recheck_s
        self._pressed_at: float | None = None  # the current press's edge time, while held
        self._released_at: float | None = None  # a short press's release, while a second press may follow
        self._second = False  # this press is the second of a possible double
        self._decided = False  # the current press already gave its gesture (long, or a held second press)
        self._timer: asyncio.TimerHandle | None = None  # long-press or double-window timer

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _at(self, deadline: float, then: Callable[[], None]) -> None:
        self._timer = asyncio.get_running_loop().call_later(max(0.0, deadline - time.monotonic()), then)

    def pressed(self, at: float) -> None:
        self._cancel()
        first_release = self._released_at
        self._second = first_release is not None and at - first_release <= self.double_s
        self._pressed_at, self._released_at, self._decided = at, None, False
        self._at(at + self.long_s, self._held)

    def released(self, at: float) -> None:
        self._cancel()
        pressed_at, self._pressed_at = self._pressed_at, None
        if self._decided or pressed_at is None:
            return
        if at - pressed_at >= self.long_s:  # held long enough, though no timer said so yet
            self._decide()
            return
        if self._second:
            self._second = False
            self.emit("double")
            return
        self._released_at = at
        self._at(at + self.double_s, self._no_second)

    def _held(self) -> None:
        self._timer = None
        release, pressed_at = self.pending(False), self._pressed_at
        if pressed_at is None:
            return
        if release is not None and release - pressed_at < self.long_s:
            self._timer = asyncio.get_running_loop().call_later(self.recheck_s, self._held)  # released in time
            return
        self._decide()

    def _decide(self) -> None:
        self._decided = True
        self.emit("double" if self._second else "long")
        self._second = False

    def _no_second(self) -> None:
        self._timer = None
        press, released_at = self.pending(True), self._released_at
        if released_at is None:
            return
        if press is not None and press - released_at <= self.double_s:
            self._timer = asyncio.get_running_loop().call_later(self.recheck_s, self._no_second)  # pressed in time
            return
        self._released_at = None
        self.emit("single")

    def close(self) -> None:
        self._cancel()


class Input(Device):
    """``<name>.state`` only: ``{"state": "on" | "off" | "unknown", "since"}``, and for a button
    ``last_press`` (ISO time) and ``press`` (the last gesture)."""

    kind = "input"
    actions = {}  # read-only: state and events

    def __init__(self, config: InputConfig, point: InputPoint) -> None:
        self.cfg = config
        self.point = point
        self.on: bool | None = None  # the debounced state (None: never read)
        self.since = time.time()  # when the debounced state last changed
        self.last_press: float | None = None  # wall-clock time of the last gesture
        self.press: str | None = None  # the last gesture
        # A change waiting out the debounce: its level, the line's time of it, and the timer that accepts it.
        self._pending: tuple[bool, float, asyncio.TimerHandle] | None = None
        self._presses = Presses(config.long_press_s, config.double_press_s, self._pressed, self._pending_change,
                                recheck_s=max(config.debounce_s, 0.01)) if config.button else None
        super().__init__(config, [point])

    def state(self) -> dict[str, Any]:
        shown = "unknown" if self.on is None else ("on" if self.on else "off")
        out: dict[str, Any] = {"state": shown, "since": iso(self.since)}
        if self.cfg.button:
            out["last_press"] = None if self.last_press is None else iso(self.last_press)
            out["press"] = self.press
        return out

    def _on_observation(self, obs: Observation) -> None:
        """Debounce by the line's own times (``obs.mono``): a change counts once the line held it for
        ``debounce_s``, whether the next edge shows that (the loop was late) or the timer does."""
        if obs.value is None:
            return
        on = bool(obs.value) == self.cfg.on_when_active
        if self._pending is not None and self._pending[0] == on:
            return  # the same level seen again (a poll, a refresh): not an edge, the debounce goes on
        if self._pending is not None:
            level, since, timer = self._pending
            timer.cancel()  # the line moved again
            self._pending = None
            if obs.mono - since >= self.cfg.debounce_s:
                self._accept(level, since)  # it had held long enough: this edge only came late to the loop
        if self.on is None or self.cfg.debounce_s == 0:
            self._accept(on, obs.mono)  # the first reading is the truth; no debounce asked for
        elif on != self.on:
            wait = max(0.0, obs.mono + self.cfg.debounce_s - time.monotonic())
            self._pending = (on, obs.mono, asyncio.get_running_loop().call_later(wait, self._settled))

    def _pending_change(self, on: bool) -> float | None:
        """The line's time of a change to *on* still inside its debounce, else None."""
        return self._pending[1] if self._pending is not None and self._pending[0] == on else None

    def _settled(self) -> None:
        if self._pending is not None:
            level, since, _ = self._pending
            self._pending = None
            self._accept(level, since)

    def _accept(self, on: bool, at: float) -> None:
        first = self.on is None
        if on == self.on:
            return
        self.on, self.since = on, time.time() - max(0.0, time.monotonic() - at - self.cfg.debounce_s)
        if self._presses is not None and not first:
            if on:
                self._presses.pressed(at)
            else:
                self._presses.released(at)
        self._publish_if_changed()

    def _pressed(self, gesture: str) -> None:
        self.press, self.last_press = gesture, time.time()
        self._emit("press", {"press": gesture})
        self._publish_if_changed()

    # -- outward --------------------------------------------------------------------------------
    def ha_entities(self) -> list[HaEntity]:
        """A ``binary_sensor`` with the configured class; a button adds an ``event`` entity (class
        ``button``) whose events are its presses."""
        sensor = {"payload_on": "ON", "payload_off": "OFF"}
        if self.cfg.device_class is not None:
            sensor["device_class"] = self.cfg.device_class
        entities = [HaEntity("binary_sensor", sensor, topics={"state_topic": "state"}, attributes=False)]
        if self.cfg.button:
            entities.append(HaEntity("event", {"device_class": "button", "event_types": list(PRESSES)},
                                     topics={"state_topic": "press"}, key="press", attributes=False))
        return entities

    def mqtt_state(self, state: dict[str, Any]) -> str:
        return {"on": "ON", "off": "OFF"}.get(state.get("state", ""), UNKNOWN)

    def mqtt_messages(self, what: str, data: dict[str, Any]) -> list[MqttMessage]:
        if what == "press":  # an event entity's payload, never retained: a press happens once
            return [MqttMessage("press", orjson.dumps({"event_type": data.get("press")}).decode(), retain=False)]
        return super().mqtt_messages(what, data)

    def panel(self) -> dict[str, Any]:
        facts = [{"field": "last_press", "as": "time", "label": "Last press"},
                 {"field": "press", "as": "text", "label": "Press"}] if self.cfg.button else []
        return {"proof": "line", "buttons": [], "facts": facts}

    async def run(self, action: str, params: dict[str, Any], timeout: float,
                  wanted: Callable[[], bool] | None = None) -> dict[str, Any]:
        raise AssertionError("an input has no actions")  # dispatch finds none to call

    def close(self) -> None:
        if self._pending is not None:
            self._pending[2].cancel()
        if self._presses is not None:
            self._presses.close()
        super().close()


def build(config: InputConfig, wiring: Wiring) -> Input:
    return Input(config, wiring.input(f"{config.name}.input", config.input))
