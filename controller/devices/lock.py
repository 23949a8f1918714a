"""A lock: an electric strike (or a magnetic lock) with a strike monitor and a door contact.

``unlock`` releases the strike for a while and relocks by itself: when the hold time has passed,
or as soon as the door, having opened, closes again. The door contact also raises alarms: the door
opened while locked (forced), or left open after the relock (held open).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import orjson

from controller.devices.base import Action, Device, Outcome, Param, evidence_of
from controller.devices.outward import UNKNOWN, HaEntity, MqttMessage, word_command
from controller.devices.wiring import Wiring
from controller.settings.devices import DeviceConfig, InputSpec, Loader, OutputSpec
from controller.settings.reader import Table
from controller.wire.clock import iso
from controller.wire.errors import Busy, InvalidParams, NotConfirmed
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

COMMANDS = {"LOCK": "lock", "UNLOCK": "unlock", "OPEN": "unlock"}  # Home Assistant's lock payloads
ALARMS = ("forced", "held_open", "cleared")


@dataclass(frozen=True)
class LockConfig(DeviceConfig):
    strike: OutputSpec  # the strike's (or maglock's) relay
    unlock_energised: bool  # unlock_when = "energised" (a fail-secure strike) or "released" (a maglock)
    monitor: InputSpec | None  # active while the latch is locked; None: confirmed by output read-back
    door_contact: InputSpec | None  # active while the door is closed
    hold_s: float  # how long an unlock lasts (a call may ask for less)
    held_open_s: float  # the door still open this long after the relock raises held_open

    def specs(self) -> dict[str, PointSpec]:
        return self.wired("strike", "monitor", "door_contact")

    def couplings(self) -> tuple[Coupling | Mechanism, ...]:
        roles = (("strike", "strike"), ("monitor", "monitor"), ("door", "door_contact"))
        return (Mechanism.wired("strike", roles, self.specs(), unlock_energised=self.unlock_energised),)


def read_config(name: str, t: Table, loader: Loader) -> LockConfig | None:
    common = loader.common(name, t, default_timeout=1.0)
    strike = loader.binary_output(t, "strike")
    unlock_when = t.string("unlock_when", default="energised", choices=("energised", "released"))
    monitor = loader.input_point(t, "monitor", required=False)
    door_contact = loader.input_point(t, "door_contact", required=False)
    hold_s = t.number("hold_s", default=5.0, high=3600.0)
    held_open_s = t.number("held_open_s", default=30.0, high=86400.0)
    if strike is None or None in (hold_s, held_open_s) or None in common.values() \
            or (t.has("monitor") and monitor is None) or (t.has("door_contact") and door_contact is None):
        return None
    return LockConfig(**common, strike=strike, unlock_energised=unlock_when != "released", monitor=monitor,
                      door_contact=door_contact, hold_s=hold_s, held_open_s=held_open_s)


class Lock(Device):
    """``unlock`` until the monitor says unlocked, then relock by itself; ``lock`` relocks now.
    A failure leaves the strike at its locked level."""

    kind = "lock"
    actions = {
        "unlock": Action(
            "release the strike for hold_s; confirmed by the monitor reporting unlocked (or the output read-back); "
            "relocks by itself after hold_s, or as soon as the door, having opened, closes again",
            {"hold_s": Param("number", "seconds to stay unlocked: the configured hold_s, or less")}),
        "lock": Action("relock now; confirmed by the monitor reporting locked (or the output read-back)"),
    }

    def __init__(self, config: LockConfig, strike: OutputPoint, monitor: InputPoint | None,
                 door_contact: InputPoint | None) -> None:
        self.cfg = config
        self.strike = strike
        self.monitor = monitor
        self.door_contact = door_contact
        self._unlock_level = config.unlock_energised  # the strike output's value that unlocks
        self.relock_at: float | None = None  # wall-clock time of the automatic relock, while unlocked by a call
        self._relock: asyncio.Task[None] | None = None  # waits for relock_at (or the door), then relocks
        self._relocking = False  # the relock holds the queue: too late to call it off
        self._opened_since_unlock = False  # the door opened in the unlock window
        self._held: asyncio.TimerHandle | None = None  # held_open_s after a relock with the door open
        self.alarm: str | None = None  # "forced" or "held_open" until the door closes
        self.failed = False  # the last call was not confirmed (Home Assistant: JAMMED)
        super().__init__(config, [p for p in (strike, monitor, door_contact) if p is not None])

    # -- state -----------------------------------------------------------------------------
    def locked(self) -> bool | None:
        """As observed: the monitor if wired, else the strike output's read-back."""
        if self.monitor is not None:
            return None if self.monitor.value is None else bool(self.monitor.value)
        value = self.strike.value
        return None if value is None else bool(value) != self._unlock_level

    def door(self) -> str | None:
        if self.door_contact is None or self.door_contact.value is None:
            return None
        return "closed" if self.door_contact.value else "open"

    def state(self) -> dict[str, Any]:
        locked = self.locked()
        return {"state": "unknown" if locked is None else "locked" if locked else "unlocked",
                "door": self.door(), "relock_at": None if self.relock_at is None or locked is not False
                else iso(self.relock_at),
                "alarm": self.alarm, "jammed": self.failed, "since": iso(self.changed_at)}

    def _on_observation(self, obs: Observation) -> None:
        if self.door_contact is not None and obs.point == self.door_contact.name:
            self._door_moved(bool(obs.value))
        elif self.monitor is not None and obs.point == self.monitor.name:
            self.failed = False  # the strike moved: whatever the last call said is history
        super()._on_observation(obs)

    def _door_moved(self, closed: bool) -> None:
        if not closed:
            if self.relock_at is not None:
                self._opened_since_unlock = True
            elif self.locked() and self.alarm is None:
                self._raise("forced")
            return
        if self._held is not None:
            self._held.cancel()
            self._held = None
        if self.alarm is not None:
            self._raise(None)
        if self.relock_at is not None and self._opened_since_unlock and not self._relocking:
            self._schedule_relock(0.0)  # in and shut again: relock now

    def _raise(self, alarm: str | None) -> None:
        """Set (or clear, None) the alarm and publish it on <name>.alarm."""
        self.alarm = alarm
        log.log(logging.WARNING if alarm else logging.INFO, "%s: alarm %s", self.name, alarm or "cleared")
        self._emit("alarm", {"alarm": alarm or "cleared"})

    def _held_open(self) -> None:
        self._held = None
        if self.door() == "open" and self.alarm is None:
            self._raise("held_open")
            self._publish_if_changed()

    # -- outward ---------------------------------------------------------------------------
    def ha_entities(self) -> list[HaEntity]:
        entities = [
            HaEntity("lock", {"payload_lock": "LOCK", "payload_unlock": "UNLOCK", "payload_open": "OPEN",
                              "state_locked": "LOCKED", "state_unlocked": "UNLOCKED", "state_jammed": "JAMMED",
                              "optimistic": False, "retain": False},
                     topics={"state_topic": "state", "command_topic": "set"}),
            HaEntity("event", {"event_types": list(ALARMS)}, topics={"state_topic": "alarm"}, key="alarm",
                     attributes=False),
        ]
        if self.door_contact is not None:
            entities.append(HaEntity("binary_sensor", {"device_class": "door", "payload_on": "open",
                                                       "payload_off": "closed"},
                                     topics={"state_topic": "door"}, key="door", attributes=False))
        return entities

    def mqtt_state(self, state: dict[str, Any]) -> str:
        if state.get("jammed"):
            return "JAMMED"  # the last call could not move the strike
        return {"locked": "LOCKED", "unlocked": "UNLOCKED"}.get(state.get("state"), UNKNOWN)  # type: ignore[arg-type]

    def mqtt_messages(self, what: str, data: dict[str, Any]) -> list[MqttMessage]:
        if what == "alarm":
            return [MqttMessage("alarm", orjson.dumps({"event_type": data.get("alarm")}), retain=False)]
        messages = super().mqtt_messages(what, data)
        if what == "state" and self.door_contact is not None:
            messages.append(MqttMessage("door", data.get("door") or UNKNOWN, retain=True))
        return messages

    def mqtt_command(self, leaf: str, text: str) -> tuple[str, dict[str, Any]]:
        return word_command(COMMANDS, self.kind, text)

    def panel(self) -> dict[str, Any]:
        return {"proof": "monitor" if self.monitor is not None else "read-back", "buttons": ["unlock", "lock"],
                "facts": [{"field": "relock_at", "as": "countdown", "label": "Relocks in"},
                          {"field": "alarm", "as": "alarm", "label": "Alarm"},
                          *([{"field": "door", "as": "text", "label": "Door"}] if self.door_contact else [])]}

    # -- actions ---------------------------------------------------------------------------
    def check_action_params(self, action: str, params: dict[str, Any]) -> None:
        if "hold_s" not in params:
            return
        hold = params["hold_s"]
        if isinstance(hold, bool) or not isinstance(hold, (int, float)) or not math.isfinite(hold) \
                or not 0 < hold <= self.cfg.hold_s:
            raise InvalidParams(f"hold_s must be a number of seconds > 0 and at most {self.cfg.hold_s:g} "
                                "(the configured hold_s)", param="hold_s", max=self.cfg.hold_s)

    async def _perform(self, action: str, params: dict[str, Any], timeout: float, started: float) -> Outcome:
        try:
            if action == "lock":
                outcome = await self._lock(timeout, started)
            else:
                outcome = await self._unlock(float(params.get("hold_s", self.cfg.hold_s)), timeout, started)
        except NotConfirmed:
            self.failed = True
            self._publish_if_changed()  # jammed, as this call's doing
            raise
        self.failed = False
        self._publish_if_changed()  # relock_at is part of the state: published as this call's doing
        return outcome

    async def _unlock(self, hold: float, timeout: float, started: float) -> Outcome:
        self._cancel_relock()
        if self.locked() is False and bool(self.strike.value) == self._unlock_level:
            self._arm_relock(hold)  # already unlocked: the window starts again
            return Outcome("unlocked", False, self._evidence(self.monitor or self.strike, "unlocked"))
        self.relock_at = time.time() + hold  # the window opens with the command, shown with the change
        self._opened_since_unlock = False
        try:
            obs = await self._drive(unlock=True, timeout=timeout, started=started)
        except BaseException:
            self.relock_at = None
            raise
        self._schedule_relock(max(0.0, self.relock_at - time.time()))
        return Outcome("unlocked", True, self._evidence_of(obs, "unlocked"))

    async def _lock(self, timeout: float, started: float) -> Outcome:
        self._cancel_relock()
        try:
            if self.locked() and bool(self.strike.value) != self._unlock_level:
                return Outcome("locked", False, self._evidence(self.monitor or self.strike, "locked"))
            obs = await self._drive(unlock=False, timeout=timeout, started=started)
        finally:
            self._relocked()  # the window is over, confirmed or not
        return Outcome("locked", True, self._evidence_of(obs, "locked"))

    async def _drive(self, *, unlock: bool, timeout: float, started: float) -> Observation:
        """Set the strike and return the observation that proves it moved (monitor, or read-back).
        Not proved in time: the strike goes back to locked, and -32002 says so."""
        word = "unlocked" if unlock else "locked"
        proof = None if self.monitor is None else self.monitor.expect(lambda v: bool(v) != unlock)
        try:
            try:
                obs = await self.strike.write(self._unlock_level if unlock else not self._unlock_level)
            except PointUnavailable:
                raise self.unavailable() from None
            except PointError as exc:
                raise self.not_confirmed(word, exc.observed, started, await self._secure()) from None
            if proof is None:
                if bool(obs.value) == (self._unlock_level if unlock else not self._unlock_level):
                    return obs
                raise self.not_confirmed(word, self.state()["state"], started, await self._secure(),
                                         self._evidence_of(obs, obs.value))
            try:
                return await proof.wait(timeout)
            except TimeoutError:
                raise self.not_confirmed(word, self.state()["state"], started, await self._secure()) from None
        finally:
            if proof is not None:
                proof.cancel()

    async def _secure(self) -> str:
        """The strike output back at its locked level after a failure; says what was done."""
        try:
            obs = await self.strike.write(not self._unlock_level)
        except Exception:  # the safety path itself failed: the installer needs all there is to know
            log.exception("%s: putting the strike back to locked FAILED", self.name)
            return "putting the strike back to locked FAILED; check the relay"
        if bool(obs.value) == self._unlock_level:
            return "the strike output did not read back locked; check the relay"
        monitor = "" if self.monitor is None else f"; the monitor reports {self.state()['state']}"
        return f"strike output back at locked{monitor}"

    def _evidence(self, point: InputPoint | OutputPoint, word: str) -> dict[str, Any]:
        return self._evidence_of(point.last, word)

    def _evidence_of(self, obs: Observation | None, word: Any) -> dict[str, Any]:
        if self.monitor is not None:
            return evidence_of(obs, word)
        # No monitor: the strike output read back, and the evidence says that is all it is.
        return {**evidence_of(obs, word, source=self.strike.readback_source), **self.strike.readback_evidence()}

    # -- the relock ------------------------------------------------------------------------
    def _arm_relock(self, hold: float) -> None:
        self.relock_at = time.time() + hold
        self._schedule_relock(hold)

    def _schedule_relock(self, delay: float) -> None:
        self._cancel_relock()
        self._relock = asyncio.get_running_loop().create_task(self._relock_after(delay), name=f"{self.name} relock")

    def _cancel_relock(self) -> None:
        if self._relock is not None and not self._relocking:
            self._relock.cancel()
        self._relock = None

    async def _relock_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            await self.run_own(self._relock_now, "auto", self.cfg.max_timeout)
        except Busy:
            log.error("%s: the automatic relock waited %g s for the device and gave up; the strike may still "
                      "be released", self.name, self.cfg.max_timeout)

    async def _relock_now(self) -> None:
        if self.relock_at is None:
            return  # a call relocked while this waited for the queue
        self._relocking = True
        try:
            await self._drive(unlock=False, timeout=self.cfg.timeout, started=time.monotonic())
        except NotConfirmed as exc:
            self.failed = True
            log.error("%s: the automatic relock was not confirmed: %s", self.name, (exc.data or {}).get("recovery"))
        except Exception:
            log.exception("%s: the automatic relock failed", self.name)
        finally:
            self._relocking = False
            self._relock = None
            self._relocked()

    def _relocked(self) -> None:
        """The unlock window is over: the door left open now starts the held-open clock."""
        self.relock_at = None
        self._opened_since_unlock = False
        if self.door() == "open" and self._held is None and self.alarm is None:
            self._held = asyncio.get_running_loop().call_later(self.cfg.held_open_s, self._held_open)

    def close(self) -> None:
        self._relocking = False
        self._cancel_relock()
        if self._held is not None:
            self._held.cancel()
            self._held = None
        super().close()


def build(config: LockConfig, wiring: Wiring) -> Lock:
    # The safe level is locked: released for a strike, energised for a magnetic lock.
    strike = wiring.output(f"{config.name}.strike", config.strike, safe=not config.unlock_energised)
    monitor = None if config.monitor is None else wiring.input(f"{config.name}.monitor", config.monitor)
    door = None if config.door_contact is None else wiring.input(f"{config.name}.door_contact", config.door_contact)
    return Lock(config, strike, monitor, door)
