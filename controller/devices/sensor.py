"""A sensor: readings with units from any registered source; stale readings make it offline.

The source is chosen by a key of the sensor's own table, whichever driver
registered it (:data:`drivers.registry.SOURCE_DRIVERS`): ``port`` (a serial
line sensor), ``modbus`` (registers of a meter on a link, one table per value
under ``values``), ``onewire`` (a DS18B20 on the kernel's 1-Wire bus).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from controller.devices.base import Action, Device
from controller.devices.outward import HaEntity, number_payload, sensor_fields
from controller.devices.wiring import Wiring
from controller.settings.devices import DeviceConfig, Loader
from controller.settings.reader import Table
from controller.wire.clock import iso
from controller.wire.errors import Unavailable
from drivers.base import Observation, PointSpec, Quantity, ReadingSource

# Home Assistant's numeric sensor classes, and the units it takes for the ones a Pi meets most.
HA_SENSOR_CLASSES = frozenset((
    "apparent_power", "aqi", "area", "atmospheric_pressure", "battery", "blood_glucose_concentration",
    "carbon_dioxide", "carbon_monoxide", "conductivity", "current", "data_rate", "data_size", "distance", "duration",
    "energy", "energy_distance", "energy_storage", "frequency", "gas", "humidity", "illuminance", "irradiance",
    "moisture", "monetary", "nitrogen_dioxide", "nitrogen_monoxide", "nitrous_oxide", "ozone", "ph", "pm1", "pm10",
    "pm25", "power", "power_factor", "precipitation", "precipitation_intensity", "pressure", "reactive_energy",
    "reactive_power", "signal_strength", "sound_pressure", "speed", "sulphur_dioxide", "temperature",
    "volatile_organic_compounds", "volatile_organic_compounds_parts", "voltage", "volume", "volume_flow_rate",
    "volume_storage", "water", "weight", "wind_direction", "wind_speed"))
HA_STATE_CLASSES = ("measurement", "measurement_angle", "total", "total_increasing")
HA_UNITS = {
    "energy": ("Wh", "kWh", "MWh", "GWh", "TWh", "mWh", "J", "kJ", "MJ", "GJ", "cal", "kcal", "Mcal", "Gcal"),
    "power": ("mW", "W", "kW", "MW", "GW", "TW", "BTU/h"),
    "voltage": ("µV", "mV", "V", "kV", "MV"),
    "current": ("mA", "A"),
    "frequency": ("Hz", "kHz", "MHz", "GHz"),
    "temperature": ("°C", "°F", "K"),
}
TOTALS = ("energy", "energy_storage", "gas", "water", "volume", "monetary")  # classes whose values accumulate


@dataclass(frozen=True)
class SensorConfig(DeviceConfig):
    source: PointSpec  # a registered source's spec: its values, units and how they are read

    @property
    def quantities(self) -> dict[str, Quantity]:
        """Value name -> unit and meaning, in the config's order."""
        return dict(self.source.quantities)  # type: ignore[attr-defined]  # every source spec has them

    def specs(self) -> dict[str, PointSpec]:
        return {"source": self.source}


def read_config(name: str, t: Table, loader: Loader) -> SensorConfig | None:
    common = loader.common(name, t, default_timeout=1.0)
    source = loader.source(t)
    if source is None or None in common.values():
        return None
    if not _meanings_fit(t, source.quantities):  # type: ignore[attr-defined]
        return None
    return SensorConfig(**common, source=source)


def _meanings_fit(t: Table, quantities: dict[str, Quantity]) -> bool:
    """Home Assistant's rules for what each value means (it ignores an entity that breaks them)."""
    fits = True
    for name, q in quantities.items():
        if q.device_class is None and q.state_class is None:
            continue
        values = t.table("values")
        where = values.table(name) if values is not None else None
        report: Callable[[str, str], None] = (where or t).problem
        if q.device_class is not None and q.device_class not in HA_SENSOR_CLASSES:
            report("device_class", "not one of Home Assistant's numeric sensor classes "
                   "(energy, power, voltage, current, temperature, ...)")
            fits = False
        elif q.device_class in HA_UNITS and q.unit not in HA_UNITS[q.device_class]:
            report("unit", f"Home Assistant's {q.device_class} class takes {', '.join(HA_UNITS[q.device_class])}")
            fits = False
        if q.state_class is not None and q.state_class not in HA_STATE_CLASSES:
            report("state_class", f"must be one of {', '.join(HA_STATE_CLASSES)}")
            fits = False
        elif q.device_class in TOTALS and q.state_class == "measurement":
            report("state_class", f"{q.device_class} accumulates: total or total_increasing (the Energy "
                   "dashboard takes total_increasing)")
            fits = False
    return fits


class Sensor(Device):
    """``read`` returns the last reading at once; there is nothing to confirm.

    One named value reads as ``{"value", "unit", "at"}``; several as
    ``{"values": {...}, "units": {...}, "at"}``. Every complete, valid reading
    is published as a reading; no valid reading for ``stale_after`` (or a
    Modbus meter that stops answering) makes the sensor offline, and ``read``
    then fails with -32004.
    """

    kind = "sensor"
    actions = {"read": Action("the last reading with its unit and time; -32004 when stale or unplugged")}

    def __init__(self, config: SensorConfig, source: ReadingSource) -> None:
        self.source = source
        self.quantities = config.quantities  # value name -> unit, device_class, state_class
        self._at: float | None = None  # wall-clock time of the last valid reading
        super().__init__(config, list(source.values.values()))
        self._unlisten.append(source.listen_readings(self._on_reading))  # taken back by close()

    def reading(self) -> dict[str, Any]:
        values = self.source.values
        at = None if self._at is None else iso(self._at)
        if len(values) == 1:
            ((name, point),) = values.items()
            return {"value": point.value, "unit": self.quantities[name].unit, "at": at}
        return {"values": {k: p.value for k, p in values.items()},
                "units": {k: self.quantities[k].unit for k in values}, "at": at}

    def state(self) -> dict[str, Any]:
        return self.reading()

    # -- outward --------------------------------------------------------------------------------
    def ha_entities(self) -> list[HaEntity]:
        """One Home Assistant sensor per value, with its unit, device_class and state_class (as
        configured, else as far as its unit tells them); several values share one JSON state."""
        values = self.source.values
        if len(values) == 1:
            (name,) = values
            return [HaEntity("sensor", self._ha_fields(name), topics={"state_topic": "state"})]
        return [HaEntity("sensor", {**self._ha_fields(name), "value_template": f"{{{{ value_json.{name} }}}}"},
                         topics={"state_topic": "state"}, key=name)
                for name in values]

    def _ha_fields(self, name: str) -> dict[str, Any]:
        q = self.quantities[name]
        fields = sensor_fields(q.unit)
        if q.device_class is not None:
            fields["device_class"] = q.device_class
        if q.state_class is not None:
            fields["state_class"] = q.state_class
        return fields

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

    async def run(self, action: str, params: dict[str, Any], timeout: float,
                  wanted: Callable[[], bool] | None = None) -> dict[str, Any]:
        """No queue: reading the last value never waits for hardware (nor starts anything to drop)."""
        self.check_online()
        if self._at is None:  # just started: its first line is on its way (offline after stale_after)
            raise Unavailable(f"{self.name} has no reading yet", device=self.name, since=None)
        return self.reading()



def build(config: SensorConfig, wiring: Wiring) -> Sensor:
    return Sensor(config, wiring.source(config.name, config.source))
