"""A garage door on a single-button opener: a pulse relay across its button, and limit contacts.

One press starts a still door (the opposite way from its last run), or stops a moving one; pictl
cannot tell the opener which way to go, only watch the limit contacts. So a call pulses, and pulses
again only when the door did not start towards the target: it stayed at its limit, or it started
from mid-way and reached the wrong limit. A door that left towards the target and came back on its
own has reversed (the opener's obstacle detection): it is never pulsed again by that call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from controller.devices.base import Action, Device, Outcome, evidence_of
from controller.devices.outward import UNKNOWN, HaEntity, word_command
from controller.devices.wiring import Wiring
from controller.settings.devices import DeviceConfig, InputSpec, Loader, OutputSpec
from controller.settings.reader import Table
from controller.wire.clock import iso
from controller.wire.errors import NotConfirmed
from drivers.base import (
    Coupling,
    InputPoint,
    Mechanism,
    Observation,
    OutputPoint,
    PointError,
    PointSpec,
    PointUnavailable,
)

log = logging.getLogger(__name__)

OVERRUN = 1.5  # a limit not reached within this many travel times is a failure
OPPOSITE = {"open": "closed", "closed": "open"}
WORDS = ("open", "closed", "opening", "closing", "stopped")  # its states, as Home Assistant's cover has them
COMMANDS = {"OPEN": "open", "CLOSE": "close", "STOP": "stop"}
TOWARDS = {"open": "opening", "closed": "closing"}


@dataclass(frozen=True)
class GarageConfig(DeviceConfig):
    pulse: OutputSpec  # the relay whose contacts are wired across the opener's button
    closed_contact: InputSpec | None  # active at the closed limit
    open_contact: InputSpec | None  # active at the open limit (at least one of the two is wired)
    pulse_s: float  # how long a press lasts
    travel_s: float  # end to end
    start_s: float  # a door that starts leaves its limit within this long after the press
    max_pulses: int  # presses per call at most

    def specs(self) -> dict[str, PointSpec]:
        return self.wired("pulse", "closed_contact", "open_contact")

    def couplings(self) -> tuple[Coupling | Mechanism, ...]:
        roles = (("button", "pulse"), ("closed", "closed_contact"), ("open", "open_contact"))
        return (Mechanism.wired("opener", roles, self.specs(), travel_s=self.travel_s),)

    @property
    def run_s(self) -> float:
        """A press, the start, and a whole run with its margin: what one pulse may take."""
        return self.pulse_s + self.start_s + OVERRUN * self.travel_s


def read_config(name: str, t: Table, loader: Loader) -> GarageConfig | None:
    pulse = loader.binary_output(t, "pulse")
    closed_contact = loader.input_point(t, "closed_contact", required=False)
    open_contact = loader.input_point(t, "open_contact", required=False)
    if not t.has("closed_contact") and not t.has("open_contact"):
        t.problem(None, "a garage needs a limit contact: closed_contact, open_contact, or both")
    pulse_s = t.number("pulse_s", default=0.5, high=10.0)
    travel_s = t.number("travel_s", high=600.0)
    start_s = t.number("start_s", default=1.0, high=60.0)
    max_pulses = t.integer("max_pulses", default=3, low=1, high=10)
    one = (pulse_s or 0) + (start_s or 0) + OVERRUN * (travel_s or 0)
    # Worst case: a run from mid-way to the wrong limit, then the presses and a whole run back.
    common = loader.common(name, t, default_timeout=round(one + (max_pulses or 1) * one, 3) or 1.0)
    if travel_s is not None and common["timeout"] is not None and common["timeout"] < one:
        t.problem("timeout", f"must be at least pulse_s + start_s + 1.5 x travel_s ({one:g} s): one run takes "
                             "that long at worst")
        return None
    if pulse is None or None in (pulse_s, travel_s, start_s, max_pulses) or None in common.values() \
            or (closed_contact is None and open_contact is None):
        return None
    return GarageConfig(**common, pulse=pulse, closed_contact=closed_contact, open_contact=open_contact,
                        pulse_s=pulse_s, travel_s=travel_s, start_s=start_s, max_pulses=max_pulses)


class Garage(Device):
    """``open``/``close`` pulse the opener and watch the limits; ``stop`` interrupts and pulses
    once if the door is moving. The pulse relay is released after every press, whatever happens."""

    kind = "garage"
    actions = {
        "open": Action("pulse the opener until the door leaves towards open; confirmed by the open limit contact "
                       "(or by travel time where only the closed one is wired)"),
        "close": Action("pulse the opener until the door leaves towards closed; confirmed by the closed limit "
                        "contact (or by travel time where only the open one is wired)"),
        "stop": Action("interrupt any call, and pulse once if the door is moving (estimated: limit contacts "
                       "cannot see a stop)", interrupts="stopped"),
    }

    def __init__(self, config: GarageConfig, pulse: OutputPoint, closed_contact: InputPoint | None,
                 open_contact: InputPoint | None) -> None:
        self.cfg = config
        self.pulse = pulse
        self.contacts = {"closed": closed_contact, "open": open_contact}  # limit -> its contact, if wired
        self._motion: str | None = None  # "opening"/"closing" since _motion_at, as far as pictl can tell
        self._motion_at = 0.0  # monotonic
        self._rest: str | None = None  # where a still door is believed to be off its limits: "stopped", or
        #                                the unwired end reached by travel time ("open"/"closed")
        self._pressed_at = -1e9  # monotonic time of the last press
        self._released = "pulse relay released"  # what the latest release did, for recovery
        self._settle: asyncio.TimerHandle | None = None  # re-evaluates the state when a run must be over
        self._at_limit: dict[str, bool] = {}  # each contact's last value: leaving is active -> inactive
        super().__init__(config, [p for p in (pulse, closed_contact, open_contact) if p is not None])

    # -- state -----------------------------------------------------------------------------
    def limit(self) -> str | None:
        """The limit whose contact is active now."""
        for end, point in self.contacts.items():
            if point is not None and point.value:
                return end
        return None

    def state(self) -> dict[str, Any]:
        return {"state": self._word(), "since": iso(self.changed_at)}

    def _word(self) -> str:
        limit = self.limit()
        if limit is not None:
            return limit
        if self._motion is not None:
            # Past the travel time the run is over: at the unwired end (if it went that way) or stopped.
            unwired = next((end for end, p in self.contacts.items() if p is None), None)
            ran = time.monotonic() - self._motion_at
            if unwired is not None and self._motion == TOWARDS[unwired] and ran >= self.cfg.travel_s:
                return unwired
            if ran < OVERRUN * self.cfg.travel_s:
                return self._motion
            return "stopped"
        return self._rest or "unknown"

    def _on_observation(self, obs: Observation) -> None:
        for end, point in self.contacts.items():
            if point is None or obs.point != point.name:
                continue
            was, self._at_limit[end] = self._at_limit.get(end), bool(obs.value)
            if obs.value:  # arrived at a limit
                self._set_motion(None, rest=None)
            elif was:  # left it: whoever pressed the button
                self._set_motion(TOWARDS[OPPOSITE[end]], rest=None, at=obs.mono)
        super()._on_observation(obs)

    def _set_motion(self, motion: str | None, rest: str | None, at: float | None = None) -> None:
        self._motion, self._rest = motion, rest
        self._motion_at = time.monotonic() if at is None else at
        if self._settle is not None:
            self._settle.cancel()
            self._settle = None
        if motion is not None:
            # Tell subscribers when the run must be over (reached the unwired end, or stopped somewhere).
            loop = asyncio.get_running_loop()
            self._settle = loop.call_later(self.cfg.travel_s, self._settled)

    def _settled(self) -> None:
        self._settle = None
        self._publish_if_changed()
        if self._motion is not None and time.monotonic() - self._motion_at < OVERRUN * self.cfg.travel_s:
            self._settle = asyncio.get_running_loop().call_later(
                OVERRUN * self.cfg.travel_s - (time.monotonic() - self._motion_at), self._settled)

    # -- outward ---------------------------------------------------------------------------
    def ha_entities(self) -> list[HaEntity]:
        return [HaEntity("cover", {
            "device_class": "garage", "payload_open": "OPEN", "payload_close": "CLOSE", "payload_stop": "STOP",
            **{f"state_{word}": word for word in WORDS}, "optimistic": False, "retain": False,
        }, topics={"state_topic": "state", "command_topic": "set"})]

    def mqtt_state(self, state: dict[str, Any]) -> str:
        word = state.get("state")
        return str(word) if word in WORDS else UNKNOWN

    def mqtt_command(self, leaf: str, text: str) -> tuple[str, dict[str, Any]]:
        return word_command(COMMANDS, self.kind, text)

    def panel(self) -> dict[str, Any]:
        return {"proof": "limit contact", "buttons": ["open", "close", "stop"]}

    # -- actions ---------------------------------------------------------------------------
    async def _perform(self, action: str, params: dict[str, Any], timeout: float, started: float) -> Outcome:
        if action == "stop":
            return await self._stop(started)
        target = "open" if action == "open" else "closed"
        deadline = started + timeout
        contact = self.contacts[target]
        if self._word() == target:
            return Outcome(target, False, self._evidence(contact, target, 0))
        pulses = 0
        while True:
            if pulses >= self.cfg.max_pulses:
                raise self._failed(target, started, f"pulsed {pulses} times and the door did not start towards "
                                                    f"{target}")
            start_limit = self.limit()
            pulses += 1
            if start_limit is not None:
                left = self.contacts[start_limit]
                assert left is not None
                leaving = left.expect(lambda v: not v)
                try:
                    await self._press(started)
                    await leaving.wait(self._left(deadline, self.cfg.start_s))
                except TimeoutError:
                    continue  # it stayed at its limit: the opener did not start (or went the wrong way)
                finally:
                    leaving.cancel()
                return await self._travel(target, start_limit, pulses, deadline, started)
            # From mid-way (after a stop): the press may send it either way; only a limit will tell.
            found = await self._first_limit(self._press(started), deadline)
            if found is None:
                if contact is None:  # the wired end never came: it went to the unwired one, the target
                    return Outcome(target, True, self._estimated(target, pulses))
                raise self._failed(target, started, "the door reached no limit within 1.5 x travel_s")
            end, obs = found
            if end == target:
                return Outcome(target, True, self._evidence_of(obs, target, pulses))
            # It reached the wrong limit: the next press starts it from there towards the target.

    async def _travel(self, target: str, start_limit: str, pulses: int, deadline: float,
                      started: float) -> Outcome:
        """The door left *start_limit* towards *target*: wait for the target limit, or for it to come back."""
        back = self.contacts[start_limit]
        contact = self.contacts[target]
        assert back is not None
        waits: list[tuple[str, InputPoint]] = [(start_limit, back)]
        if contact is not None:
            waits.append((target, contact))
        run_s = self.cfg.travel_s if contact is None else OVERRUN * self.cfg.travel_s
        found = await self._first(waits, self._left(deadline, run_s))
        if found is None:
            if contact is None:  # left one end, did not come back within the travel time: at the other
                return Outcome(target, True, self._estimated(target, pulses))
            raise self._failed(target, started, "the door left but reached no limit within 1.5 x travel_s")
        end, obs = found
        if end == target:
            return Outcome(target, True, self._evidence_of(obs, target, pulses))
        raise self._failed(target, started, "the opener reversed on its own (an obstacle?): not pulsed again",
                           observed=start_limit)

    async def _stop(self, started: float) -> Outcome:
        limit = self.limit()
        since_press = time.monotonic() - self._pressed_at
        window = self.cfg.pulse_s + self.cfg.start_s
        if limit is not None and since_press < window:
            # A press a moment ago may yet start the door: wait (briefly) to see it leave its limit.
            point = self.contacts[limit]
            assert point is not None
            leaving = point.expect(lambda v: not v)
            try:
                await leaving.wait(window - since_press)
            except TimeoutError:
                pass
            finally:
                leaving.cancel()
        word = self._word()
        if word not in ("opening", "closing"):
            contact = self.contacts.get(word)
            return Outcome(word, False, self._evidence(contact, word, 0))
        obs = await self._press(started)
        self._set_motion(None, rest="stopped")
        evidence = {**evidence_of(obs, "stopped", source=self.pulse.readback_source), "estimated": True,
                    "pulses": 1}
        return Outcome("stopped", True, evidence)

    # -- the button ------------------------------------------------------------------------
    async def _press(self, started: float) -> Observation:
        """One press of the button: energise for pulse_s, then release. A press already begun is
        finished even when the call is interrupted (a cut-short press may or may not count)."""
        try:
            obs = await self.pulse.write(True)
        except PointUnavailable:
            await self._release()
            raise self.unavailable() from None
        except PointError as exc:
            raise self._failed("pressed", started, f"the press failed ({exc.observed})") from None
        self._pressed_at = obs.mono
        try:
            await asyncio.sleep(self.cfg.pulse_s)
        except asyncio.CancelledError:
            await asyncio.sleep(max(0.0, self._pressed_at + self.cfg.pulse_s - time.monotonic()))
            raise
        finally:
            await self._release()
        return obs

    async def _release(self) -> None:
        """The button let go, whatever happened; what was done goes into the next ``recovery``."""
        try:
            obs = await self.pulse.write(False)
        except Exception:  # the safety path itself failed: the installer needs all there is to know
            log.exception("%s: releasing the pulse relay FAILED", self.name)
            self._released = "releasing the pulse relay FAILED; check the relay"
            return
        self._released = "pulse relay released" if not obs.value else \
            "the pulse relay still reads back energised; check the relay"

    # -- waiting for limits ----------------------------------------------------------------
    def _left(self, deadline: float, wanted: float) -> float:
        return max(0.0, min(wanted, deadline - time.monotonic()))

    async def _first_limit(self, press: Any, deadline: float) -> tuple[str, Observation] | None:
        """Press, then the first limit contact to become active within a whole run (or None)."""
        waits = [(end, p) for end, p in self.contacts.items() if p is not None]
        return await self._first(waits, self._left(deadline, self.cfg.run_s), before=press)

    async def _first(self, waits: list[tuple[str, InputPoint]], timeout: float,
                     before: Any = None) -> tuple[str, Observation] | None:
        """The first of *waits* (name, contact) to report active within *timeout*, watched from
        before *before* (an awaitable: the press) is awaited; None when none did."""
        found: asyncio.Future[tuple[str, Observation]] = asyncio.get_running_loop().create_future()
        undo: list[Callable[[], None]] = []
        for name, point in waits:
            if point.last is not None and point.last.value and not found.done():
                found.set_result((name, point.last))  # already there (it ran while we pressed)
            def seen(obs: Observation, name: str = name) -> None:
                if obs.value and not found.done():
                    found.set_result((name, obs))
            undo.append(point.listen(seen))
        try:
            if before is not None:
                await before
            async with asyncio.timeout(timeout):
                return await found
        except TimeoutError:
            return None
        finally:
            for u in undo:
                u()

    # -- results ---------------------------------------------------------------------------
    def _evidence(self, contact: InputPoint | None, word: str, pulses: int) -> dict[str, Any]:
        if contact is None:
            return self._estimated(word, pulses)
        return self._evidence_of(contact.last, word, pulses)

    def _evidence_of(self, obs: Observation | None, word: str, pulses: int) -> dict[str, Any]:
        return {**evidence_of(obs, word), "pulses": pulses}

    def _estimated(self, word: str, pulses: int) -> dict[str, Any]:
        """A limit with no contact, reached by travel time."""
        return {"source": "travel-time", "value": word, "estimated": True, "at": iso(time.time()), "pulses": pulses}

    def _failed(self, target: str, started: float, why: str, observed: str | None = None) -> NotConfirmed:
        return self.not_confirmed(target, observed or self._word(), started, f"{self._released}; {why}",
                                  why=f"({why})")

    def interrupted(self, action: str, by: str, word: str, started: float) -> NotConfirmed:
        expected = {"open": "open", "close": "closed"}.get(action, action)
        return self._failed(expected, started, f"{word} by {by}")

    def close(self) -> None:
        if self._settle is not None:
            self._settle.cancel()
            self._settle = None
        super().close()


def build(config: GarageConfig, wiring: Wiring) -> Garage:
    pulse = wiring.output(f"{config.name}.pulse", config.pulse, safe=False)
    contacts = [None if spec is None else wiring.input(f"{config.name}.{key}", spec)
                for key, spec in (("closed_contact", config.closed_contact), ("open_contact", config.open_contact))]
    return Garage(config, pulse, *contacts)
