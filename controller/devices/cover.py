"""A cover: a motor with an up and a down relay (a blind, a shutter, a sliding gate) and its endstops.

The design follows ESPHome's endstop and feedback covers: the two relays are interlocked (never
both energised; a reversal releases both for ``reverse_delay_s`` first), a run that does not reach
its endstop within 1.5 x ``travel_s`` is stopped, and between the ends the position is estimated
from the time the motor ran since the last endstop seen. An estimate never claims an end whose
endstop is wired: only the endstop does.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from controller.devices.base import Action, Device, Outcome, Param, evidence_of
from controller.devices.outward import (
    UNKNOWN,
    BadCommand,
    HaEntity,
    MqttMessage,
    number_payload,
    parse_number,
    word_command,
)
from controller.devices.wiring import Wiring
from controller.settings.devices import DeviceConfig, InputSpec, Loader, OutputSpec
from controller.settings.reader import Table
from controller.wire.clock import iso
from controller.wire.errors import InvalidParams, NotConfirmed
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

OVERRUN = 1.5  # an endstop not reached within this many travel times is a failure
OPEN, CLOSED = 1.0, 0.0
WORDS = ("open", "closed", "opening", "closing", "stopped")  # its states, as Home Assistant's cover has them
COMMANDS = {"OPEN": "open", "CLOSE": "close", "STOP": "stop"}


@dataclass(frozen=True)
class CoverConfig(DeviceConfig):
    up: OutputSpec  # energised: the motor opens the cover
    down: OutputSpec  # energised: it closes it
    open_endstop: InputSpec | None  # active at the open end; None: not wired
    closed_endstop: InputSpec | None  # active at the closed end; None: not wired
    travel_s: float  # end to end
    reverse_delay_s: float  # both relays released this long before the motor reverses

    def specs(self) -> dict[str, PointSpec]:
        return self.wired("up", "down", "open_endstop", "closed_endstop")

    def couplings(self) -> tuple[Coupling | Mechanism, ...]:
        roles = (("up", "up"), ("down", "down"), ("open", "open_endstop"), ("closed", "closed_endstop"))
        return (Mechanism.wired("motor", roles, self.specs(), travel_s=self.travel_s),)


def read_config(name: str, t: Table, loader: Loader) -> CoverConfig | None:
    up = loader.binary_output(t, "up")
    reported = len(t.doc.problems)
    down = loader.binary_output(t, "down")
    down_said = len(t.doc.problems) > reported  # e.g. its GPIO line is already claimed (by up)
    open_endstop = loader.input_point(t, "open_endstop", required=False)
    closed_endstop = loader.input_point(t, "closed_endstop", required=False)
    travel_s = t.number("travel_s", high=3600.0)
    reverse_delay_s = t.number("reverse_delay_s", default=0.5, low=0.0, high=60.0, low_inclusive=True)
    # A set_position from an unknown position runs to an end first, then back: room for both.
    full = (reverse_delay_s or 0.0) + OVERRUN * (travel_s or 0.0)
    common = loader.common(name, t, default_timeout=round(2 * full, 3) or 1.0)
    if travel_s is not None and common["timeout"] is not None and common["timeout"] < full:
        t.problem("timeout", f"must be at least reverse_delay_s + 1.5 x travel_s ({full:g} s): "
                             "a run to an end takes that long at worst")
        return None
    if up is not None and up == down:
        if not down_said:  # a bus without line claims (a Modbus coil): say it here
            t.problem("down", "must be another output than up")
        return None
    if up is None or down is None or None in (travel_s, reverse_delay_s) or None in common.values() \
            or (t.has("open_endstop") and open_endstop is None) or (t.has("closed_endstop") and closed_endstop is None):
        return None
    return CoverConfig(**common, up=up, down=down, open_endstop=open_endstop, closed_endstop=closed_endstop,
                       travel_s=travel_s, reverse_delay_s=reverse_delay_s)


def _percent(position: float | None) -> int | None:
    return None if position is None else round(position * 100)


class Cover(Device):
    """``open``/``close`` run the motor to the endstop (or for the travel time where none is wired);
    ``set_position`` runs it for the estimated time; ``stop`` releases both relays. Every movement
    and ``stop`` interrupts whatever runs; every ending, failed or not, releases both relays."""

    kind = "cover"
    actions = {
        "open": Action("run the motor up; confirmed by the open endstop (or by travel time where none is wired)",
                       interrupts="superseded"),
        "close": Action("run the motor down; confirmed by the closed endstop (or by travel time where none is "
                        "wired)", interrupts="superseded"),
        "stop": Action("release both relays now, interrupting any movement; confirmed by both reading back "
                       "released", interrupts="stopped"),
        "set_position": Action(
            "run to a position by travel time from the last endstop seen (estimated); from an unknown position "
            "it first runs to the nearer end",
            {"position": Param("number", "0..100, where 100 is open", required=True)}, interrupts="superseded"),
    }

    def __init__(self, config: CoverConfig, up: OutputPoint, down: OutputPoint, open_endstop: InputPoint | None,
                 closed_endstop: InputPoint | None) -> None:
        self.cfg = config
        self.up, self.down = up, down
        self.endstops = {OPEN: open_endstop, CLOSED: closed_endstop}  # end -> its endstop, if wired
        self._at: float | None = None  # position (0..1) when the motor last started or stopped
        self._at_time = time.monotonic()  # ...at this monotonic time
        self._moving: str | None = None  # the motion the estimate runs with since then
        self._last_release = "both relays released"  # what the latest release did, for recovery
        self._endstop_was: dict[str, bool] = {}  # each endstop's last value, by point name
        self._reference: Observation | None = None  # the last endstop seen (what estimates start from)
        self._released = {"up": 0.0, "down": 0.0}  # monotonic time each relay was last released
        self._halted_by_interrupt = False  # a movement's cleanup released a running motor
        super().__init__(config, [p for p in (up, down, open_endstop, closed_endstop) if p is not None])

    # -- where it is -----------------------------------------------------------------------
    def _motion(self) -> str | None:
        """What the relays (as read back) make the motor do."""
        up, down = bool(self.up.value), bool(self.down.value)
        if up == down:
            return None
        return "opening" if up else "closing"

    def _endstop_end(self) -> float | None:
        """The end whose endstop is active now, if any."""
        for end, point in self.endstops.items():
            if point is not None and point.value:
                return end
        return None

    def _position_at(self, mono: float) -> float | None:
        """0..1 (1 = open) at monotonic time *mono*: an active endstop, else the estimate by travel
        time; None before any end was seen."""
        end = self._endstop_end()
        if end is not None:
            return end
        if self._at is None:
            return None
        ran = 0.0 if self._moving is None else (mono - self._at_time) / self.cfg.travel_s
        estimate = self._at + ran if self._moving == "opening" else self._at - ran
        # Never claim an end by estimate where that end has an endstop to say so.
        top = 0.99 if self.endstops[OPEN] is not None else OPEN
        bottom = 0.01 if self.endstops[CLOSED] is not None else CLOSED
        return min(top, max(bottom, estimate))

    def position(self) -> float | None:
        return self._position_at(time.monotonic())

    def state(self) -> dict[str, Any]:
        position = self.position()
        word = self._motion()
        if word is None:
            word = "unknown" if position is None else "open" if position >= OPEN else \
                "closed" if position <= CLOSED else "stopped"
        return {"state": word, "position": _percent(position), "since": iso(self.changed_at)}

    def _on_observation(self, obs: Observation) -> None:
        if obs.point in (self.up.name, self.down.name):
            # A relay changed: the estimate restarts from where the cover is now, with the new motion.
            self._at, self._at_time, self._moving = self._position_at(obs.mono), obs.mono, self._motion()
        else:
            was, self._endstop_was[obs.point] = self._endstop_was.get(obs.point), bool(obs.value)
            if obs.value:
                self._at, self._at_time, self._reference = self._endstop_end(), obs.mono, obs
            elif was and self._moving is None:
                self._at = None  # an endstop let go while the motor was still: moved by hand, or the switch failed
        super()._on_observation(obs)

    # -- outward ---------------------------------------------------------------------------
    def ha_entities(self) -> list[HaEntity]:
        return [HaEntity("cover", {
            "payload_open": "OPEN", "payload_close": "CLOSE", "payload_stop": "STOP",
            **{f"state_{word}": word for word in WORDS}, "position_open": 100, "position_closed": 0,
            "optimistic": False, "retain": False,
        }, topics={"state_topic": "state", "command_topic": "set", "position_topic": "position",
                   "set_position_topic": "set_position"})]

    def mqtt_state(self, state: dict[str, Any]) -> str:
        word = state.get("state")
        return str(word) if word in WORDS else UNKNOWN

    def mqtt_messages(self, what: str, data: dict[str, Any]) -> list[MqttMessage]:
        messages = super().mqtt_messages(what, data)
        if what == "state":
            messages.append(MqttMessage("position", number_payload(data.get("position")), retain=True))
        return messages

    def mqtt_command(self, leaf: str, text: str) -> tuple[str, dict[str, Any]]:
        if leaf == "set_position":
            position = parse_number(text)
            if not 0 <= position <= 100:
                raise BadCommand("a position is 0 (closed) to 100 (open)")
            return "set_position", {"position": position}
        return word_command(COMMANDS, self.kind, text)

    def panel(self) -> dict[str, Any]:
        return {"proof": "endstop", "buttons": ["open", "close", "stop"],
                "controls": [{"action": "set_position", "param": "position", "type": "range", "min": 0, "max": 100,
                              "step": 1, "label": "Position"}],
                "facts": [{"field": "position", "as": "percent", "label": "Position"}]}

    # -- actions ---------------------------------------------------------------------------
    def check_action_params(self, action: str, params: dict[str, Any]) -> None:
        if action != "set_position":
            return
        value = params.get("position")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not 0 <= value <= 100:
            raise InvalidParams("position must be a number from 0 (closed) to 100 (open)", param="position")

    async def _perform(self, action: str, params: dict[str, Any], timeout: float, started: float) -> Outcome:
        halted, self._halted_by_interrupt = self._halted_by_interrupt, False
        if action == "stop":
            return await self._stop(halted, started)
        target = {"open": OPEN, "close": CLOSED}.get(action)
        if target is None:
            target = float(params["position"]) / 100
        deadline = started + timeout
        if target not in (OPEN, CLOSED) and self.position() is None:
            # Nothing to estimate from yet: calibrate at the nearer end first.
            await self._run_to_end(OPEN if target >= 0.5 else CLOSED, deadline, started, _percent(target))
        if target in (OPEN, CLOSED):
            return await self._run_to_end(target, deadline, started)
        return await self._run_to(target, deadline, started)

    async def _run_to_end(self, end: float, deadline: float, started: float, expected: Any = None) -> Outcome:
        word = "open" if end == OPEN else "closed"
        expected = word if expected is None else expected
        endstop = self.endstops[end]
        if endstop is not None and endstop.value:
            return Outcome(word, False, evidence_of(endstop.last, word))
        if endstop is None and self.position() == end and self._motion() is None:
            return Outcome(word, False, self._estimated(end))
        relay = "up" if end == OPEN else "down"
        if endstop is None:  # no endstop there: run for the travel time it needs, then call it there
            now = self.position()
            run_s = self.cfg.travel_s * (1.0 if now is None else abs(end - now))
            await self._run(relay, run_s, deadline, started, expected)
            self._at, self._at_time = end, time.monotonic()
            return Outcome(word, True, self._estimated(end))
        proof = endstop.expect(bool)
        try:
            obs = await self._run(relay, OVERRUN * self.cfg.travel_s, deadline, started, expected, proof=proof)
        finally:
            proof.cancel()
        return Outcome(word, True, evidence_of(obs, word))

    async def _run_to(self, target: float, deadline: float, started: float) -> Outcome:
        now = self.position()
        assert now is not None
        if abs(target - now) < 0.005 and self._motion() is None:
            return Outcome(self.state()["state"], False, self._estimated(now))
        relay = "up" if target > now else "down"
        await self._run(relay, abs(target - now) * self.cfg.travel_s, deadline, started, _percent(target))
        self._at, self._at_time = target, time.monotonic()  # the best estimate is where it was sent
        return Outcome(self.state()["state"], True, self._estimated(target))

    def _estimated(self, position: float) -> dict[str, Any]:
        """Evidence of a position known by travel time from the last endstop seen."""
        out: dict[str, Any] = {"source": "travel-time", "value": _percent(position), "estimated": True,
                               "at": iso(time.time())}
        if self._reference is not None:
            out["from"] = evidence_of(self._reference, "open" if self._reference.point.endswith(".open_endstop")
                                      else "closed")
        return out

    async def _run(self, relay: str, run_s: float, deadline: float, started: float, expected: Any,
                   proof: Any = None) -> Observation | None:
        """Energise *relay* (after the interlock and any reversal pause) until *proof* (an endstop's
        expectation) or for *run_s*; both relays are released however it ends."""
        why = ""
        try:
            await self._energise(relay, deadline, started)
            left = deadline - time.monotonic()
            if proof is None:
                if run_s > left:
                    raise _Abort(f"the call's timeout left {max(left, 0):.1f} s for a {run_s:.1f} s run")
                await asyncio.sleep(run_s)
                return None
            try:
                return await proof.wait(min(run_s, max(left, 0.0)))
            except TimeoutError:
                self._at = None  # it ran without reaching the end: where it is now is anyone's guess
                limit = f"1.5 x travel_s ({run_s:g} s)" if run_s <= left else "the call's timeout"
                raise _Abort(f"the endstop did not report within {limit}") from None
        except _Abort as abort:
            why = abort.why
        except asyncio.CancelledError:
            self._halted_by_interrupt = self._motion() is not None
            raise
        finally:
            await self._release_both()
        raise self._failed(expected, started, why)

    async def _energise(self, relay: str, deadline: float, started: float) -> None:
        """The interlock: the other relay released (and read back so) and, on a reversal, left so
        for reverse_delay_s, before *relay* is energised."""
        point, other = (self.up, self.down) if relay == "up" else (self.down, self.up)
        other_name = "down" if relay == "up" else "up"
        if other.value:
            await self._write(other, False)
        pause = self._released[other_name] + self.cfg.reverse_delay_s - time.monotonic()
        if pause > 0:
            if time.monotonic() + pause > deadline:
                raise _Abort("the call's timeout ended in the reversal pause")
            await asyncio.sleep(pause)
        if (await self._read(other)).value:
            raise _Abort(f"the {other_name} relay reads back energised: {relay} not energised")
        if not (await self._write(point, True)).value:
            raise _Abort(f"the {relay} relay did not read back energised")

    async def _stop(self, halted: bool, started: float) -> Outcome:
        moving = self._motion() is not None
        readbacks = await self._release_both()
        if len(readbacks) < 2:
            raise self._failed("stopped", started, "stop not confirmed")
        evidence = {**evidence_of(readbacks[-1], "released", source=self.up.readback_source), "up": False,
                    "down": False}
        return Outcome(self.state()["state"], moving or halted, evidence)

    # -- the outputs -------------------------------------------------------------------------
    async def _release_both(self) -> list[Observation]:
        """Both relays to released, whatever happened before; returns the read-backs that say so,
        and leaves what was done in ``_last_release`` (for ``recovery``)."""
        failed, readbacks = [], []
        for name, point in (("up", self.up), ("down", self.down)):
            was = bool(point.value)
            try:
                obs = await point.write(False)
            except Exception:  # keep going: the other relay must be released all the same
                log.exception("%s: releasing the %s relay FAILED", self.name, name)
                failed.append(name)
                continue
            if was:
                self._released[name] = time.monotonic()
            if obs.value:
                log.error("%s: the %s relay still reads back energised after its release", self.name, name)
                failed.append(name)
            else:
                readbacks.append(obs)
        self._last_release = f"releasing the {' and '.join(failed)} relay FAILED; check the wiring" if failed \
            else "both relays released"
        return readbacks

    async def _write(self, point: OutputPoint, value: bool) -> Observation:
        try:
            return await point.write(value)
        except PointUnavailable:
            raise self.unavailable() from None
        except PointError as exc:
            raise _Abort(f"writing {point.name} failed ({exc.observed})") from None

    async def _read(self, point: OutputPoint) -> Observation:
        try:
            return await point.read_back()
        except PointUnavailable:
            raise self.unavailable() from None
        except PointError as exc:
            raise _Abort(f"reading {point.name} back failed ({exc.observed})") from None

    def _failed(self, expected: Any, started: float, why: str) -> NotConfirmed:
        """-32002 once both relays were released: ``recovery`` says how that went, and why."""
        return self.not_confirmed(expected, self.state()["state"], started, f"{self._last_release}; {why}",
                                  {"position": _percent(self.position())}, why=f"({why})")

    def interrupted(self, action: str, by: str, word: str, started: float) -> NotConfirmed:
        return self._failed({"open": "open", "close": "closed"}.get(action, action), started, f"{word} by {by}")


class _Abort(Exception):
    """A run given up (the relays are released on the way out); *why* goes into ``recovery``."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def build(config: CoverConfig, wiring: Wiring) -> Cover:
    up = wiring.output(f"{config.name}.up", config.up, safe=False)
    down = wiring.output(f"{config.name}.down", config.down, safe=False)
    endstops = [None if spec is None else wiring.input(f"{config.name}.{key}", spec)
                for key, spec in (("open_endstop", config.open_endstop), ("closed_endstop", config.closed_endstop))]
    return Cover(config, up, down, *endstops)
