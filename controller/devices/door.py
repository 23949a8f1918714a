"""A door: a relay that drives the door (or its strike) and a contact that proves it moved."""

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
from drivers.base import Coupling, InputPoint, OutputPoint, PointError, PointSpec, PointUnavailable

TRAVEL_S = 0.3  # a simulated door's time from relay to contact
COMMANDS = {"OPEN": "open", "CLOSE": "close"}  # MQTT command payloads

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DoorConfig(DeviceConfig):
    relay: OutputSpec  # energised = door driven open; released = safe
    contact: InputSpec  # the door's position switch
    open_when_active: bool  # does an active contact mean open? (a reed switch: no)

    def specs(self) -> dict[str, PointSpec]:
        return {"relay": self.relay, "contact": self.contact}

    def couplings(self) -> tuple[Coupling, ...]:
        # Energised, the door travels open; the contact then reads "open".
        return (Coupling("relay", "contact", active_when_on=self.open_when_active, delay_s=TRAVEL_S,
                         fault="jammed"),)


def read_config(name: str, t: Table, loader: Loader) -> DoorConfig | None:
    common = loader.common(name, t, default_timeout=5.0)
    relay = loader.binary_output(t, "relay")
    contact = loader.input_point(t, "contact")
    open_when = t.string("open_when", default="inactive", choices=("active", "inactive"))
    if relay is None or contact is None or None in common.values():
        return None
    return DoorConfig(**common, relay=relay, contact=contact, open_when_active=open_when == "active")


class Door(Device):
    """``open`` energises the relay until the contact reports open; ``close`` releases it
    until the contact reports closed. A failure always leaves the relay released."""

    kind = "door"
    actions = {
        "open": Action("energise the door actuator; confirmed by the contact reporting open"),
        "close": Action("release the door actuator; confirmed by the contact reporting closed"),
    }

    def __init__(self, config: DoorConfig, relay: OutputPoint, contact: InputPoint) -> None:
        self.relay = relay
        self.contact = contact
        self._open_value = config.open_when_active  # contact value that means open
        self._moving_to: str | None = None  # target while commanded but not yet observed
        super().__init__(config, [relay, contact])

    def position(self) -> str:
        """What the contact says: open, closed, or unknown before the first reading."""
        value = self.contact.value
        if value is None:
            return "unknown"
        return "open" if value == self._open_value else "closed"

    def state(self) -> dict[str, Any]:
        position = self.position()
        shown = "moving" if self._moving_to is not None and self._moving_to != position else position
        return {"state": shown, "actuator": bool(self.relay.value), "since": iso(self.changed_at)}

    def discrepancy(self) -> dict[str, Any] | None:
        # Released means the door falls closed; energised means it is held open.
        actuator = bool(self.relay.value)
        position = self.position()
        if position == "unknown" or (position == "open") == actuator:
            return None
        return {"output": "energised" if actuator else "released", "expected": "open" if actuator else "closed",
                "observed": position}

    # -- outward --------------------------------------------------------------------------------
    def ha_entities(self) -> list[HaEntity]:
        return [HaEntity("cover", {
            "device_class": "door", "payload_open": "OPEN", "payload_close": "CLOSE", "payload_stop": None,
            "state_open": "open", "state_opening": "opening", "state_closed": "closed", "state_closing": "closing",
            "optimistic": False, "retain": False,
        }, topics={"state_topic": "state", "command_topic": "set"})]

    def mqtt_state(self, state: dict[str, Any]) -> str:
        shown = state.get("state")
        if shown == "moving":  # commanded, not yet observed: the actuator says which way
            return "opening" if state.get("actuator") else "closing"
        return shown if shown in ("open", "closed") else UNKNOWN

    def mqtt_command(self, leaf: str, text: str) -> tuple[str, dict[str, Any]]:
        return word_command(COMMANDS, self.kind, text)

    def panel(self) -> dict[str, Any]:
        return {"proof": "contact", "buttons": ["open", "close"]}

    async def _perform(self, action: str, params: dict[str, Any], timeout: float, started: float) -> Outcome:
        target = "open" if action == "open" else "closed"
        energise = action == "open"
        if self.position() == target:
            # Already there: only bring the actuator in line (a door pushed open by hand).
            changed = bool(self.relay.value) != energise
            if changed:
                await self.relay.write(energise)
            return Outcome(target, changed, evidence_of(self.contact.last, target))
        want = self._open_value if target == "open" else not self._open_value
        proof = self.contact.expect(lambda v: v == want)
        self._moving_to = target
        try:
            try:
                await self.relay.write(energise)
            except PointUnavailable:
                raise self.unavailable() from None
            except PointError as exc:  # a relay on a bus (a Modbus coil) that did not take the command
                self._moving_to = None
                raise self.not_confirmed(target, exc.observed, started, await self._release()) from None
            self._publish_if_changed()
            try:
                obs = await proof.wait(timeout)
            except TimeoutError:
                self._moving_to = None  # given up: the release shows what was observed, not a motion
                raise self.not_confirmed(target, self.position(), started, await self._release()) from None
        finally:
            proof.cancel()
            self._moving_to = None
        return Outcome(target, True, evidence_of(obs, target))

    async def _release(self) -> str:
        """De-energise the actuator after a failure; says what was done."""
        recovery = "actuator released"
        try:
            await self.relay.write(False)
        except Exception:  # the safety path itself failed: the installer needs all there is to know
            log.exception("%s: releasing the actuator after a failed action FAILED", self.name)
            recovery = "actuator release FAILED; check the relay"
        return f"{recovery}; door is {self.position()}"


def build(config: DoorConfig, wiring: Wiring) -> Door:
    relay = wiring.output(f"{config.name}.relay", config.relay, safe=False)
    contact = wiring.input(f"{config.name}.contact", config.contact)
    return Door(config, relay, contact)
