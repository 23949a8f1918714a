"""A switch: an output confirmed by a feedback input, or by reading the output back."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from controller.devices.base import Action, Device, Outcome, evidence_of
from controller.devices.outward import UNKNOWN, HaEntity, word_command
from controller.devices.wiring import Wiring
from controller.settings.devices import DeviceConfig, InputSpec, Loader, OutputSpec
from controller.settings.reader import Table
from controller.wire.clock import iso
from drivers.base import Coupling, InputPoint, Observation, OutputPoint, PointError, PointSpec, PointUnavailable

FEEDBACK_S = 0.05  # a simulated load's time from output to feedback
COMMANDS = {"ON": "on", "OFF": "off", "TOGGLE": "toggle"}  # MQTT command payloads

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SwitchConfig(DeviceConfig):
    output: OutputSpec  # what is switched
    feedback: InputSpec | None  # proof that the load followed; None: read the output back
    on_when_active: bool  # does an active feedback mean on?
    safe_on: bool  # level written on failure and at shutdown, and at start unless keep_on_start
    keep_on_start: bool = False  # claim the output at whatever level it is (a daemon restart keeps the light on)

    def specs(self) -> dict[str, PointSpec]:
        return {"output": self.output} if self.feedback is None else {"output": self.output, "feedback": self.feedback}

    def couplings(self) -> tuple[Coupling, ...]:
        if self.feedback is None:
            return ()  # confirmed by reading the output back: nothing to follow
        return (Coupling("output", "feedback", active_when_on=self.on_when_active, delay_s=FEEDBACK_S,
                         fault="no_feedback"),)


def read_config(name: str, t: Table, loader: Loader) -> SwitchConfig | None:
    common = loader.common(name, t, default_timeout=1.0)
    output = loader.binary_output(t, "output")
    feedback = loader.input_point(t, "feedback", required=False)
    on_when = t.string("on_when", default="active", choices=("active", "inactive"))
    safe = t.string("safe", default="off", choices=("off", "on"))
    on_start = t.string("on_start", default="safe", choices=("safe", "keep"))
    if feedback is None and t.has("on_when"):
        t.problem("on_when", "only meaningful with a feedback input")
    if output is None or None in common.values() or (t.has("feedback") and feedback is None):
        return None
    return SwitchConfig(**common, output=output, feedback=feedback,
                        on_when_active=on_when == "active", safe_on=safe == "on", keep_on_start=on_start == "keep")


def _shown(on: bool | None) -> str:
    return "unknown" if on is None else ("on" if on else "off")


class Switch(Device):
    """``on``/``off``/``toggle``, each confirmed before it returns; a failure returns
    the output to its safe level."""

    kind = "switch"
    actions = {
        "on": Action("switch on; confirmed by the feedback input or the output read-back"),
        "off": Action("switch off; confirmed by the feedback input or the output read-back"),
        "toggle": Action("switch to the opposite of the current state, confirmed likewise"),
    }

    def __init__(self, config: SwitchConfig, output: OutputPoint, feedback: InputPoint | None) -> None:
        self.output = output
        self.feedback = feedback
        self._on_value = config.on_when_active  # feedback value that means on
        self._safe = config.safe_on
        super().__init__(config, [output] if feedback is None else [output, feedback])

    def is_on(self) -> bool | None:
        """The load's state as observed: feedback if wired, else the output read-back."""
        if self.feedback is None:
            return self.output.value
        value = self.feedback.value
        return None if value is None else value == self._on_value

    def state(self) -> dict[str, Any]:
        # One shape whatever the bus or the wiring: without feedback, `output` is the same read-back.
        return {"state": _shown(self.is_on()), "output": _shown(self.output.value), "since": iso(self.changed_at)}

    def discrepancy(self) -> dict[str, Any] | None:
        if self.feedback is None or self.output.value is None or self.is_on() is None:
            return None
        if self.is_on() == self.output.value:
            return None
        return {"output": _shown(self.output.value), "expected": _shown(self.output.value),
                "observed": _shown(self.is_on())}

    def _evidence(self, obs: Observation | None, on: bool | None) -> dict[str, Any]:
        if self.feedback is None:
            return {**evidence_of(obs, _shown(on), source=self.output.readback_source),
                    **self.output.readback_evidence()}
        return evidence_of(obs, _shown(on))

    # -- outward --------------------------------------------------------------------------------
    def ha_entities(self) -> list[HaEntity]:
        return [HaEntity("switch", {"payload_on": "ON", "payload_off": "OFF", "state_on": "ON", "state_off": "OFF",
                                    "optimistic": False, "retain": False},
                         topics={"state_topic": "state", "command_topic": "set"})]

    def mqtt_state(self, state: dict[str, Any]) -> str:
        return {"on": "ON", "off": "OFF"}.get(state.get("state", ""), UNKNOWN)

    def mqtt_command(self, leaf: str, text: str) -> tuple[str, dict[str, Any]]:
        return word_command(COMMANDS, self.kind, text)

    def panel(self) -> dict[str, Any]:
        return {"proof": "read-back" if self.feedback is None else "feedback", "buttons": list(self.actions)}

    async def _perform(self, action: str, params: dict[str, Any], timeout: float, started: float) -> Outcome:
        current = self.is_on()
        target = (not current if current is not None else not self.output.value) if action == "toggle" \
            else action == "on"
        shown = _shown(target)
        if current == target and self.output.value == target:
            proof_point = self.feedback or self.output
            return Outcome(shown, False, self._evidence(proof_point.last, target))
        if self.feedback is None:
            obs = await self.write_read_back(self.output, target, shown, timeout, started, self._recover)
            if obs.value == target:
                return Outcome(shown, True, self._evidence(obs, target))
            raise self.not_confirmed(shown, _shown(obs.value), started, await self._recover(),
                                     self._evidence(obs, obs.value))
        want = self._on_value if target else not self._on_value
        proof = self.feedback.expect(lambda v: v == want)
        try:
            try:
                await self.output.write(target)
            except PointUnavailable:
                raise self.unavailable() from None
            except PointError as exc:
                raise self.not_confirmed(shown, exc.observed, started, await self._recover()) from None
            try:
                obs = await proof.wait(timeout)
            except TimeoutError:
                observed = _shown(self.is_on())
                raise self.not_confirmed(shown, observed, started, await self._recover()) from None
        finally:
            proof.cancel()
        return Outcome(shown, True, self._evidence(obs, target))

    async def _recover(self) -> str:
        """Return the output to its safe level; says what was done."""
        try:
            obs = await self.output.write(self._safe)
        except PointError as exc:
            log.exception("%s: returning the output to its safe state FAILED", self.name)
            return f"returning the output to its safe state FAILED ({exc.observed}); check the device"
        except Exception:
            log.exception("%s: returning the output to its safe state FAILED", self.name)
            return "returning the output to its safe state FAILED; check the wiring"
        if obs.value != self._safe:
            return f"output did not read back {_shown(self._safe)} (safe state); check the wiring"
        return f"output returned to {_shown(self._safe)} (safe state)"


def build(config: SwitchConfig, wiring: Wiring) -> Switch:
    output = wiring.output(f"{config.name}.output", config.output, safe=config.safe_on, keep=config.keep_on_start)
    feedback = None if config.feedback is None else wiring.input(f"{config.name}.feedback", config.feedback)
    return Switch(config, output, feedback)
