"""A setpoint: a number written to a holding register (a drive's speed), confirmed by reading it back."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from controller.devices.base import Action, Device, Outcome, Param, evidence_of
from controller.devices.outward import HaEntity, number_payload, parse_number
from controller.devices.wiring import Wiring
from controller.settings.devices import DeviceConfig, Loader
from controller.settings.reader import Table
from controller.wire.clock import iso
from controller.wire.errors import InvalidParams
from drivers.base import OutputPoint, PointError, PointSpec
from drivers.modbus_spec import ModbusPointSpec, encode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SetpointConfig(DeviceConfig):
    output: ModbusPointSpec  # a holding register (optionally verified at another address)
    min: float  # lowest value a caller may set
    max: float  # highest
    tolerance: float  # how far the read-back may be from the value asked for
    unit: str  # shown with the value, e.g. "%" or "Hz"
    safe: float | None  # written at start, after a failure and at shutdown; None: restore the old value

    def specs(self) -> dict[str, PointSpec]:
        return {"output": self.output}


def read_config(name: str, t: Table, loader: Loader) -> SetpointConfig | None:
    common = loader.common(name, t, default_timeout=2.0)
    output = loader.output_point(t, "output")
    if output is not None and not (isinstance(output, ModbusPointSpec) and output.at.table == "holding"):
        t.problem("output", 'a setpoint is a Modbus holding register: { modbus = "LINK", holding = ADDRESS }')
        output = None
    low = t.number("min", low=-math.inf)
    high = t.number("max", low=-math.inf)
    default_tolerance = abs(output.at.scale) / 2 if output is not None else 0.0
    tolerance = t.number("tolerance", default=default_tolerance, low=0.0, low_inclusive=True)
    unit = t.string("unit", default="")
    safe = t.number("safe", default=None, low=-math.inf)
    if low is not None and high is not None and low > high:
        t.problem("max", f"must be >= min ({low:g})")
        return None
    if safe is not None and low is not None and high is not None and not low <= safe <= high:
        t.problem("safe", f"must be within min..max ({low:g}..{high:g})")
    if output is not None:
        for key, value in (("min", low), ("max", high)):
            if value is None:
                continue
            try:
                encode(output.at, value)
            except ValueError as exc:
                t.problem(key, f"does not fit the register: {exc}")
                output = None
                break
    if output is None or None in (low, high, tolerance, unit) or None in common.values():
        return None
    return SetpointConfig(**common, output=output, min=low, max=high, tolerance=tolerance, unit=unit, safe=safe)


class Setpoint(Device):
    """``set {"value": N}`` writes the register and returns once it reads back within tolerance."""

    kind = "setpoint"
    actions = {
        "set": Action("write the value; confirmed when the register reads back within the tolerance",
                      {"value": Param("number", "the value to set, within the configured min..max", required=True)}),
    }

    def __init__(self, config: SetpointConfig, output: OutputPoint) -> None:
        self.output = output
        self.cfg = config
        super().__init__(config, [output])

    def state(self) -> dict[str, Any]:
        return {"value": self.output.value, "unit": self.cfg.unit, "since": iso(self.changed_at)}

    # -- outward --------------------------------------------------------------------------------
    def ha_entities(self) -> list[HaEntity]:
        cfg = self.cfg
        fields: dict[str, Any] = {"optimistic": False, "retain": False, "mode": "box",
                                  "min": _number(cfg.min), "max": _number(cfg.max)}
        step = abs(cfg.output.at.scale)
        if step:
            fields["step"] = _number(step)
        if cfg.unit:
            fields["unit_of_measurement"] = cfg.unit
        return [HaEntity("number", fields, topics={"state_topic": "state", "command_topic": "set"})]

    def mqtt_state(self, state: dict[str, Any]) -> str:
        return number_payload(state.get("value"))

    def mqtt_command(self, leaf: str, text: str) -> tuple[str, dict[str, Any]]:
        return "set", {"value": parse_number(text)}

    def panel(self) -> dict[str, Any]:
        return {"proof": "read-back", "buttons": [],
                "controls": [{"action": "set", "param": "value", "type": "number", "min": self.cfg.min,
                              "max": self.cfg.max, "label": f"Value{f' ({self.cfg.unit})' if self.cfg.unit else ''}"}]}

    def check_action_params(self, action: str, params: dict[str, Any]) -> None:
        value = params.get("value")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidParams("value must be a number", param="value")
        if not self.cfg.min <= value <= self.cfg.max:
            raise InvalidParams(f"value must be within {self.cfg.min:g}..{self.cfg.max:g}", param="value",
                                min=self.cfg.min, max=self.cfg.max)
        try:
            encode(self.cfg.output.at, value)
        except ValueError as exc:
            raise InvalidParams(f"value does not fit the register: {exc}", param="value") from None

    def _close_enough(self, read: Any, value: float) -> bool:
        return isinstance(read, (int, float)) and abs(read - value) <= self.cfg.tolerance + 1e-9

    def _evidence(self, obs: Any) -> dict[str, Any]:
        return {**evidence_of(obs, obs.value, source=self.output.readback_source), **self.output.readback_evidence()}

    async def _perform(self, action: str, params: dict[str, Any], timeout: float, started: float) -> Outcome:
        value = float(params["value"])
        previous = self.output.value
        if self._close_enough(previous, value) and self.output.last is not None:
            return Outcome(previous, False, self._evidence(self.output.last))
        obs = await self.write_read_back(self.output, value, value, timeout, started,
                                         lambda: self._recover(previous))
        if self._close_enough(obs.value, value):
            return Outcome(obs.value, True, self._evidence(obs))
        raise self.not_confirmed(value, obs.value, started, await self._recover(previous), self._evidence(obs))

    async def _recover(self, previous: Any) -> str:
        """The safe value if configured, else the value read before the failed set."""
        target = self.cfg.safe if self.cfg.safe is not None else previous
        what = "the safe value" if self.cfg.safe is not None else "the previous value"
        if target is None:
            return "no previous value known; nothing restored"
        try:
            obs = await self.output.write(target)
        except PointError as exc:
            log.exception("%s: writing %s after a failed set FAILED", self.name, what)
            return f"writing {what} {target:g} FAILED ({exc.observed}); check the device"
        except Exception:
            log.exception("%s: writing %s after a failed set FAILED", self.name, what)
            return f"writing {what} {target:g} FAILED; check the device"
        if not self._close_enough(obs.value, target):
            return f"{what} {target:g} did not read back (read {obs.value}); check the device"
        return f"{what} {target:g} restored"


def build(config: SetpointConfig, wiring: Wiring) -> Setpoint:
    return Setpoint(config, wiring.output(f"{config.name}.output", config.output, safe=config.safe))


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value
