"""A sensor: readings from a serial line, with units; stale readings make it offline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from controller.devices.base import Action, Device
from controller.devices.outward import HaEntity, number_payload, sensor_fields
from controller.devices.wiring import Wiring
from controller.settings.devices import DeviceConfig, Loader
from controller.settings.reader import Table
from controller.wire.clock import iso
from drivers.base import Observation, PointSpec
from drivers.serial_sensor import SerialSensor, SerialSensorSpec


@dataclass(frozen=True)
class SensorConfig(DeviceConfig):
    serial: SerialSensorSpec  # port, framing, pattern with named groups, units, request, stale_after

    def specs(self) -> dict[str, PointSpec]:
        return {"serial": self.serial}


def read_config(name: str, t: Table, loader: Loader) -> SensorConfig | None:
    common = loader.common(name, t, default_timeout=1.0)
    serial = loader.serial_sensor(t)
    if serial is None or None in common.values():
        return None
    return SensorConfig(**common, serial=serial)


class Sensor(Device):
    """``read`` returns the last reading at once; there is nothing to confirm.

    One named value reads as ``{"value", "unit", "at"}``; several as
    ``{"values": {...}, "units": {...}, "at"}``. Every valid line is
    published as a reading; no valid line for ``stale_after`` makes the
    sensor offline, and ``read`` then fails with -32004.
    """

    kind = "sensor"
    actions = {"read": Action("the last reading with its unit and time; -32004 when stale or unplugged")}

    def __init__(self, config: SensorConfig, source: SerialSensor) -> None:
        self.source = source
        self._at: float | None = None  # wall-clock time of the last valid reading
        super().__init__(config, source.points)
        source.listen_readings(self._on_reading)

    def reading(self) -> dict[str, Any]:
        values = self.source.values
        at = None if self._at is None else iso(self._at)
        if len(values) == 1:
            (point,) = values.values()
            return {"value": point.value, "unit": point.unit, "at": at}
        return {"values": {k: p.value for k, p in values.items()}, "units": {k: p.unit for k, p in values.items()},
                "at": at}

    def state(self) -> dict[str, Any]:
        return self.reading()

    # -- outward --------------------------------------------------------------------------------
    def ha_entities(self) -> list[HaEntity]:
        """One Home Assistant sensor per named value (a JSON state object when there are several)."""
        values = self.source.values
        if len(values) == 1:
            (point,) = values.values()
            return [HaEntity("sensor", sensor_fields(point.unit), topics={"state_topic": "state"})]
        return [HaEntity("sensor", {**sensor_fields(point.unit), "value_template": f"{{{{ value_json.{key} }}}}"},
                         topics={"state_topic": "state"}, key=key)
                for key, point in values.items()]

    def mqtt_state(self, state: dict[str, Any]) -> str:
        if "values" in state:  # several named values: one JSON object
            return orjson.dumps(state["values"]).decode()
        return number_payload(state.get("value"))

    def panel(self) -> dict[str, Any]:
        return {"proof": "reading", "buttons": []}  # readings arrive by themselves: nothing to press

    def _on_observation(self, obs: Observation) -> None:
        """Readings go out as readings (``<device>.reading``), not as state changes."""

    def _on_reading(self, values: dict[str, float], at: float) -> None:
        self._at = at
        self.changed_at = at
        self.publish_reading(self.reading())

    async def run(self, action: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
        """No queue: reading the last value never waits for hardware."""
        self.check_online()
        if self._at is None:
            raise self.unavailable()
        return self.reading()


def build(config: SensorConfig, wiring: Wiring) -> Sensor:
    return Sensor(config, wiring.serial_sensor(config.name, config.serial))
