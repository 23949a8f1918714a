"""GPIO physics: mock pins wired to each other through delays and faults.

gpiozero's :class:`MockFactory` gives pins that a test can drive; this module
adds what the wiring and the world would do: an output line energising a
relay, and some time later an input line (a door contact, a lamp's feedback)
changing level. Faults stop a linkage from following (a jammed door, a dead
feedback contact) or let a hand move the world behind the daemon's back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from gpiozero.pins.mock import MockFactory, MockPin

from drivers.sim.recent import Recent

log = logging.getLogger(__name__)


class WorldPin(MockPin):
    """A mock pin that tells the world when it is driven as an output, and
    whose level as an input can be forced by the world (a closed contact holds
    the line whatever the pull resistor says)."""

    states: list[object]  # gpiozero's record of every change (PinState tuples), bounded here

    def __init__(self, factory: MockFactory, info: object) -> None:
        self.on_output: Callable[[bool], None] | None = None  # set by a Linkage
        self.forced: bool | None = None  # electrical level the world holds, or None
        super().__init__(factory, info)
        self.states = Recent(self.states)

    def clear_states(self) -> None:
        super().clear_states()
        self.states = Recent(self.states)

    def _set_state(self, value: float) -> None:
        super()._set_state(value)
        if self.on_output is not None:
            self.on_output(bool(value))

    def _set_pull(self, value: str) -> None:
        super()._set_pull(value)
        if self.forced is not None:
            self.hold(self.forced)

    def hold(self, level: bool) -> None:
        """The world sets the line to *level* (fires edge callbacks on change)."""
        self.forced = level
        if self._function == "input":
            if level:
                self.drive_high()
            else:
                self.drive_low()


@dataclass
class Linkage:
    """An output line that moves an input line after a delay.

    ``energised`` is the output's electrical level that turns the actuator on;
    ``level_when_on`` / ``level_when_off`` are the input's electrical levels in
    the two physical positions.
    """

    loop: asyncio.AbstractEventLoop
    output: WorldPin
    energised: bool
    target: WorldPin
    level_when_on: bool
    delay_s: float
    stuck: bool = False  # a fault: the input no longer follows
    moved_at: deque[float] = field(default_factory=lambda: deque(maxlen=100))  # when the input last moved
    # Told ("output", actuated) when the output is driven and ("position", on) when the thing moves:
    # the plant's own record of what happened (Plant.history).
    record: Callable[[str, bool], None] | None = None
    _pending: asyncio.TimerHandle | None = None

    def __post_init__(self) -> None:
        self.output.on_output = self._on_output

    @property
    def actuated(self) -> bool:
        return self.output.state == self.energised if self.output.function == "output" else False

    def place(self, on: bool) -> None:
        """Put the physical thing in a position now (initial state, or a hand)."""
        self.target.hold(self.level_when_on if on else not self.level_when_on)
        self.moved_at.append(time.monotonic())
        if self.record is not None:
            self.record("position", on)

    def _on_output(self, level: bool) -> None:
        if self.record is not None:
            self.record("output", level == self.energised)
        self._schedule(level == self.energised)

    def _schedule(self, on: bool) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self.stuck or self.loop.is_closed():
            return
        self._pending = self.loop.call_later(self.delay_s, self._arrive, on)

    def _arrive(self, on: bool) -> None:
        self._pending = None
        if not self.stuck:
            self.place(on)

    def jam(self) -> None:
        self.stuck = True
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None

    def detach(self) -> None:
        """Stop following the output for good; the input keeps its level."""
        self.jam()
        if self.output.on_output == self._on_output:
            self.output.on_output = None

    def free(self) -> None:
        """Clear the fault: the world catches up with the output after the delay."""
        self.stuck = False
        self._schedule(self.actuated)


def make_factory() -> MockFactory:
    """A mock pin factory whose pins can be linked (a Pi 3B layout)."""
    return MockFactory(pin_class=WorldPin)
