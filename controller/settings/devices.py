"""[devices.NAME] and the point specs inside them, read by the kinds with the drivers' parsers.

Device kinds read their own tables (``read_config(name, table, loader)``, see
:mod:`controller.devices.registry`); the kind registry is passed in by whoever
loads a config, never imported here. Point tables name their driver by a key
(``{ gpio = 17 }``, ``{ modbus = "plc", coil = 3 }``), whose parser lives with
the driver (:data:`drivers.registry.POINT_DRIVERS`).
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from controller.settings.reader import Document, Table
from controller.wire.protocol import RESERVED_NAMES
from drivers.base import Coupling, Mechanism, PointSpec
from drivers.modbus_spec import ModbusPointSpec
from drivers.registry import POINT_DRIVERS, SOURCE_DRIVERS, SpecContext

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# A point's spec on whichever bus reads it (GPIO, Modbus, or any bus in drivers/registry.py).
OutputSpec = PointSpec
InputSpec = PointSpec


@dataclass(frozen=True)
class DeviceConfig:
    """What every device kind has; kinds subclass it with their own fields."""

    name: str  # valid identifier, the method prefix
    kind: str  # registered kind name
    timeout: float  # default confirmation deadline, seconds
    max_timeout: float  # cap on a caller's "timeout"

    def specs(self) -> dict[str, PointSpec]:
        """The device's points: config field name -> spec (kinds with points override it)."""
        return {}

    def wired(self, *fields: str) -> dict[str, PointSpec]:
        """The specs of *fields* that are configured (an optional point left out is None)."""
        return {key: getattr(self, key) for key in fields if getattr(self, key) is not None}

    def couplings(self) -> tuple[Coupling | Mechanism, ...]:
        """The physics the kind promises between its points (for the simulated plant)."""
        return ()


class KindReader(Protocol):
    """What loading needs of a device kind: its table read into its config."""

    def read_config(self, name: str, t: Table, loader: Loader) -> DeviceConfig | None: ...


class Loader:
    """Reads one document's device tables; device kinds call back into it for their points."""

    def __init__(self, doc: Document, links: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.doc = doc
        self.context = SpecContext(links=links or {})  # GPIO claims, links read before the devices

    @staticmethod
    def _one_key(t: Table, hints: Mapping[str, str], subject: str, what: str) -> str | None:
        """The one key of *hints* that *t* holds (a point's driver, a sensor's source), else a problem."""
        keys = [key for key in hints if t.has(key)]
        if len(keys) == 1:
            return keys[0]
        choices = ", or ".join(hints.values())
        if keys:
            t.problem(keys[1], f"{subject} has one {what}: {choices}")
            for key in keys:
                t.take(key)
        else:
            t.problem(None, f"{subject} needs a {what}: {choices}")
        return None

    def _driver(self, t: Table) -> str | None:
        return self._one_key(t, {key: driver.hint for key, driver in POINT_DRIVERS.items()}, "a point", "driver key")

    def binary_output(self, parent: Table, key: str) -> OutputSpec | None:
        """An on/off output: a GPIO line or a Modbus coil (not a register)."""
        spec = self.output_point(parent, key)
        if isinstance(spec, ModbusPointSpec) and spec.at.table != "coil":
            parent.problem(key, f"switches on and off: on Modbus that is a coil, not a {spec.at.table} register")
            return None
        return spec

    def output_point(self, parent: Table, key: str, required: bool = True) -> OutputSpec | None:
        return self._point(parent, key, required, output=True)

    def input_point(self, parent: Table, key: str, required: bool = True) -> InputSpec | None:
        return self._point(parent, key, required, output=False)

    def _point(self, parent: Table, key: str, required: bool, *, output: bool) -> PointSpec | None:
        """The spec of point table *key*, read by the driver its key names (any registered bus)."""
        t = parent.table(key, required=required)
        driver = None if t is None else self._driver(t)
        if t is None or driver is None:
            return None
        reader = POINT_DRIVERS[driver].read_output if output else POINT_DRIVERS[driver].read_input
        return reader(t, self.context)

    def source(self, t: Table) -> PointSpec | None:
        """A sensor's source of readings, read by the driver whose key its table holds (any source
        registered in :data:`drivers.registry.SOURCE_DRIVERS`: a serial port, a Modbus meter, 1-Wire)."""
        by_key = {driver.key: driver for driver in SOURCE_DRIVERS.values()}
        key = self._one_key(t, {k: driver.hint for k, driver in by_key.items()}, "a sensor", "source")
        if key is None:
            for other in t.data:
                t.take(other)  # without a source its other keys mean nothing: one problem, not one per key
            return None
        return by_key[key].read(t, self.context)

    def common(self, name: str, t: Table, default_timeout: float) -> dict[str, Any]:
        """Fields every device kind has."""
        timeout = t.number("timeout", default=default_timeout, high=3600.0)
        max_timeout = t.number("max_timeout", default=max(30.0, timeout or 0.0), high=3600.0)
        if timeout and max_timeout and max_timeout < timeout:
            t.problem("max_timeout", f"must be >= timeout ({timeout})")
        return {"name": name, "kind": t.data.get("kind"), "timeout": timeout, "max_timeout": max_timeout}


def read_devices(root: Table, loader: Loader, kinds: Mapping[str, KindReader]) -> dict[str, DeviceConfig]:
    """Every ``[devices.NAME]``, read by its kind."""
    devices: dict[str, DeviceConfig] = {}
    for name, t in root.tables("devices"):
        if not _NAME.fullmatch(name) or keyword.iskeyword(name):
            t.problem(None, "device name must be an identifier (letters, digits, _; not starting with a digit)")
            continue
        if name in RESERVED_NAMES:
            t.problem(None, f"device name {name!r} is reserved for the daemon's own methods")
            continue
        kind_name = t.string("kind")
        if kind_name is None:
            continue
        kind = kinds.get(kind_name)
        if kind is None:
            t.problem("kind", f"unknown device kind {kind_name!r} (known: {', '.join(sorted(kinds))})")
            continue
        device = kind.read_config(name, t, loader)
        t.finish()
        if device is not None:
            devices[name] = device
    return devices
