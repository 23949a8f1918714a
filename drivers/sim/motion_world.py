"""Machines at the far side of several GPIO lines: a strike with its door, a garage opener, a motor.

A door kind's contact follows its relay (one :class:`drivers.sim.gpio_world.Linkage`); the lock,
garage and cover kinds need more: a strike whose monitor follows the relay and whose door a visitor
opens, a single-button opener that remembers which way it last ran, a motor driven by two relays
that stops at its ends. Kinds describe them with a :class:`drivers.base.Mechanism`; the GPIO far
side builds the machine named by its ``model`` here, on the plant's mock pins.

Every machine listens to its output lines, keeps its physical state, moves its input lines from
timers on the event loop (every duration multiplied by the plant's time scale), tells the plant's
record every output change (a device with several outputs: all of them by their config names, in
each entry) and every position change, and offers its faults (README, "The building demo").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from drivers.sim.plant import Plant

log = logging.getLogger(__name__)

LEAVE = 0.05  # a door leaves its limit switch once it has gone this part of its travel
MONITOR_S = 0.05  # a strike's latch (and its monitor switch) follows the relay
VISITOR_AFTER_S = 0.3  # after each unlock, a visitor opens the door...
VISITOR_OPEN_S = 1.0  # ...and closes it again this much later
OBSTACLE_AT = 0.3  # a closing door meets the obstacle this far along its path


@dataclass(frozen=True)
class Wire:
    """One of a machine's lines."""

    pin: int  # BCM number
    active: bool  # electrical level: energising for an output, active for an input


@dataclass
class MachineFault:
    """``sim.fault DEVICE NAME`` on a machine."""

    machine: Machine
    name: str

    def inject(self) -> None:
        self.machine.set_fault(self.name, True)

    def clear(self) -> None:
        self.machine.set_fault(self.name, False)


class Machine:
    """What every machine shares: its pins, its timers, its record and its faults.

    A model *must* name its ``outputs``, ``inputs`` and ``faults`` (roles and fault names), and
    implement :meth:`output_changed` and :meth:`place`; it *may* react to faults in
    :meth:`fault_changed`.
    """

    outputs: ClassVar[tuple[str, ...]] = ()  # roles of the lines the daemon drives
    inputs: ClassVar[tuple[str, ...]] = ()  # roles of the lines the machine moves
    faults: ClassVar[tuple[str, ...]] = ()

    def __init__(self, plant: Plant, device: str, wires: dict[str, Wire], names: dict[str, str],
                 settings: dict[str, Any]) -> None:
        self.loop = plant.loop
        self.scale = plant.time_scale  # every duration is multiplied by it
        self.settings = settings
        self.wires = wires  # role -> line (roles not wired are absent)
        self.names = names  # role -> the config field, for the record
        self.pins = {role: plant.gpio_factory.pin(wire.pin) for role, wire in wires.items()}
        self.record = plant.recorder(device)
        self.moved_at: deque[float] = deque(maxlen=100)  # when an input line last moved (sim.timeline)
        self.active: set[str] = set()  # faults injected
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._stopped = False
        for role in self.outputs:
            if role in self.pins:
                self.pins[role].on_output = self._output_callback(role)
        for fault in self.faults:
            plant.add_fault(device, fault, MachineFault(self, fault))
        plant.add_machine(device, self)

    def _output_callback(self, role: str) -> Callable[[bool], None]:
        def changed(level: bool) -> None:
            if self._stopped:
                return
            outputs = [r for r in self.outputs if r in self.pins]
            if len(outputs) == 1:
                self.record("output", level == self.wires[role].active)
            else:
                self.record("output", {self.names[r]: self.energised(r) for r in outputs})
            self.output_changed(role, level == self.wires[role].active)
        return changed

    def energised(self, role: str) -> bool:
        pin = self.pins.get(role)
        if pin is None or pin.function != "output":
            return False
        return bool(pin.state) == self.wires[role].active

    def hold(self, role: str, active: bool) -> None:
        """Put input *role* in its active state or not (nothing when it is not wired)."""
        pin = self.pins.get(role)
        if pin is None:
            return
        level = self.wires[role].active if active else not self.wires[role].active
        if pin.forced != level:
            self.moved_at.append(time.monotonic())
        pin.hold(level)

    def later(self, key: str, delay_s: float, then: Callable[[], None]) -> None:
        """Run *then* after *delay_s* (scaled), replacing what was pending under *key*."""
        self.cancel(key)
        if self._stopped or self.loop.is_closed():
            return

        def fire() -> None:
            self._timers.pop(key, None)
            if not self._stopped:
                then()

        self._timers[key] = self.loop.call_later(max(0.0, delay_s) * self.scale, fire)

    def pending(self, key: str) -> bool:
        return key in self._timers

    def cancel(self, key: str) -> None:
        handle = self._timers.pop(key, None)
        if handle is not None:
            handle.cancel()

    def set_fault(self, name: str, on: bool) -> None:
        if on:
            self.active.add(name)
        else:
            self.active.discard(name)
        if not self._stopped:
            self.fault_changed(name, on)

    def stop(self) -> None:
        """Freeze: no timer fires and no output is followed after this (unlink, plant stop)."""
        self._stopped = True
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()

    def output_changed(self, role: str, energised: bool) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def fault_changed(self, name: str, on: bool) -> None:
        """A fault was injected or cleared."""

    def place(self) -> None:  # pragma: no cover - abstract
        """Set every input line from the physical state, and record the position."""
        raise NotImplementedError


class Strike(Machine):
    """An electric strike (or a magnetic lock) with its monitor switch, and the door it holds.

    The latch follows the relay after ``MONITOR_S``; the monitor is active while the latch is
    locked, the door contact while the door is closed. After each unlock a visitor opens the door
    (if the latch is still released then) and closes it again later. Faults: ``jammed`` (the latch,
    and so the monitor, stays locked), ``forced`` (the door opens while locked, until cleared),
    ``propped`` (after its next opening the door stays open, until cleared).
    """

    outputs = ("strike",)
    inputs = ("monitor", "door")
    faults = ("jammed", "forced", "propped")

    def __init__(self, *args: Any) -> None:
        self.unlocked = False  # the latch, as it physically is
        self.door_open = False
        super().__init__(*args)
        self.unlock_energised = bool(self.settings.get("unlock_energised", True))

    def place(self) -> None:
        self.hold("monitor", not self.unlocked)
        self.hold("door", not self.door_open)
        self.record("position", {"latch": "unlocked" if self.unlocked else "locked",
                                 "door": "open" if self.door_open else "closed"})

    def output_changed(self, role: str, energised: bool) -> None:
        wants = energised == self.unlock_energised
        self.later("latch", MONITOR_S, lambda: self._latch(wants))

    def _latch(self, unlocked: bool) -> None:
        if "jammed" in self.active:
            unlocked = False
        if unlocked == self.unlocked:
            return
        self.unlocked = unlocked
        self.place()
        if unlocked:
            self.later("visitor", VISITOR_AFTER_S, self._visitor_opens)

    def _visitor_opens(self) -> None:
        if not self.unlocked or self.door_open:
            return
        self._door(True)
        if "propped" not in self.active:
            self.later("visitor", VISITOR_OPEN_S, lambda: self._door(False))

    def _door(self, open_: bool) -> None:
        if open_ != self.door_open:
            self.door_open = open_
            self.place()

    def fault_changed(self, name: str, on: bool) -> None:
        if name == "forced":
            self._door(on)
        elif name == "propped" and not on and self.door_open and not self.pending("visitor"):
            self._door(False)  # the wedge is taken away: the closer shuts the door
        elif name == "jammed" and not on:
            self.output_changed("strike", self.energised("strike"))


class Travel(Machine):
    """Something that travels between a closed end (0) and an open end (1) in ``travel_s``."""

    def __init__(self, *args: Any) -> None:
        self.at = 0.0  # position when the motion (if any) began
        self.began = 0.0  # monotonic time it began
        self.motion: str | None = None  # "opening", "closing", or None when still
        super().__init__(*args)
        self.travel_s = float(self.settings["travel_s"])  # unscaled, as later() takes it

    def position(self) -> float:
        if self.motion is None:
            return self.at
        moved = (time.monotonic() - self.began) / (self.travel_s * self.scale)
        return min(1.0, self.at + moved) if self.motion == "opening" else max(0.0, self.at - moved)

    def run(self, motion: str | None) -> None:
        """Start moving (or stop, None) from where it is now."""
        self.at = self.position()
        self.began = time.monotonic()
        self.motion = motion
        self.cancel("arrive")
        if motion is not None:
            remaining = 1.0 - self.at if motion == "opening" else self.at
            self.later("arrive", remaining * self.travel_s, self._arrive)

    def _arrive(self) -> None:
        self.at = 1.0 if self.motion == "opening" else 0.0
        self.motion = None
        self.arrived()

    def arrived(self) -> None:
        self.place()

    def record_position(self) -> None:
        self.record("position", {"position": round(self.position() * 100), "motion": self.motion or "stopped"})


class Opener(Travel):
    """A single-button garage door opener with a closed and an open limit switch.

    A press starts a still door the other way from its last run, or stops a moving one; a door
    leaves its limit switch once it has gone ``LEAVE`` of its travel. Faults: ``obstacle`` (a closing door
    reverses part way and runs back open), ``no_power`` (presses do nothing; a moving door stops),
    ``reversed`` (the opener's memory points the wrong way for the next start).
    """

    outputs = ("button",)
    inputs = ("closed", "open")
    faults = ("obstacle", "no_power", "reversed")

    def __init__(self, *args: Any) -> None:
        self.last_run = "closing"  # it came to rest closed
        self.limit: str | None = "closed"  # the limit switch it rests on, or None
        self.misremembers = False  # the ``reversed`` fault, until the next start uses it up
        super().__init__(*args)

    def place(self) -> None:
        self.hold("closed", self.limit == "closed")
        self.hold("open", self.limit == "open")
        self.record_position()

    def output_changed(self, role: str, energised: bool) -> None:
        if not energised or "no_power" in self.active:
            return  # the opener acts on the press
        if self.motion is not None:
            self.run(None)
            self.cancel("leave")
            self.cancel("obstacle")
            self.place()
            return
        direction = "opening" if self.last_run == "closing" else "closing"
        if self.misremembers:
            direction, self.misremembers = self.last_run, False
        self.last_run = direction
        if (direction == "opening" and self.at >= 1.0) or (direction == "closing" and self.at <= 0.0):
            return  # driven into the limit it rests on: nothing moves, but its memory flipped
        self.run(direction)
        if self.limit is not None:
            self.later("leave", LEAVE * self.travel_s, self._leave)
        if direction == "closing" and "obstacle" in self.active:
            self.later("obstacle", self.at * OBSTACLE_AT * self.travel_s, self._obstacle)
        self.record_position()

    def _leave(self) -> None:
        self.limit = None
        self.place()

    def _obstacle(self) -> None:
        self.last_run = "opening"
        self.run("opening")
        self.record_position()

    def arrived(self) -> None:
        self.cancel("obstacle")
        self.limit = "open" if self.at >= 1.0 else "closed"
        self.place()

    def fault_changed(self, name: str, on: bool) -> None:
        if name == "reversed":
            self.misremembers = on
        elif name == "no_power" and on and self.motion is not None:
            self.run(None)
            self.cancel("obstacle")
            self.record_position()
        elif name == "obstacle" and on and self.motion == "closing":
            self.later("obstacle", 0.0, self._obstacle)


class Motor(Travel):
    """A motor with an up and a down relay (a blind, a shutter, a gate), and its endstops.

    It moves while exactly one relay is energised and stops at its ends by itself; the open
    endstop is active at the open end, the closed endstop at the closed end. Faults: ``stall``
    (the motor stops moving), ``endstop_broken`` (the closed endstop never reports).
    """

    outputs = ("up", "down")
    inputs = ("open", "closed")
    faults = ("stall", "endstop_broken")

    def place(self) -> None:
        still = self.motion is None
        self.hold("open", still and self.at >= 1.0)
        self.hold("closed", still and self.at <= 0.0 and "endstop_broken" not in self.active)
        self.record_position()

    def output_changed(self, role: str, energised: bool) -> None:
        self._drive()

    def _drive(self) -> None:
        up, down = self.energised("up"), self.energised("down")
        if up and down:
            log.error("simulated motor: both its up and its down relay are energised")
        motion = None
        if up != down and "stall" not in self.active:
            motion = "opening" if up else "closing"
            if (self.position() >= 1.0 and up) or (self.position() <= 0.0 and down):
                motion = None  # at that end already: its own limit switch keeps it still
        if motion != self.motion:
            self.run(motion)
            self.place()

    def fault_changed(self, name: str, on: bool) -> None:
        if name == "stall":
            self._drive()  # stalled: still where it is; freed: moves again if a relay says so
        else:
            self.place()


MODELS: dict[str, type[Machine]] = {"strike": Strike, "opener": Opener, "motor": Motor}


def build_machine(plant: Plant, device: str, model: str, wires: dict[str, Wire], names: dict[str, str],
                  settings: dict[str, Any]) -> Machine:
    """The machine *model* on *wires* (role -> line), at rest (locked and closed)."""
    machine = MODELS[model](plant, device, wires, names, settings)
    machine.place()
    return machine
