"""Points on a Modbus link, the plan that polls them, and a meter's values as a sensor's source.

The link itself (:mod:`drivers.modbus`) owns the connection, the requests and
health; this module holds what is polled and how the polling is grouped:

- :class:`ModbusInput` / :class:`ModbusOutput`: a coil, discrete input or
  register group, observed when a poll sees it change.
- :func:`plan_reads`: the points' addresses in as few requests as the
  addresses allow: per device and table, contiguous ranges merge into one
  read, up to the protocol's limit per request. A meter that answers reads
  across its unused registers (``max_gap``) merges values that are a few
  registers apart as well.
- :class:`ModbusMeter`: a sensor's named values on one device; each poll
  round that reads all of them with numbers is one reading. A value that
  reads NaN or an infinity (a float meter's "no value") is never observed:
  that value goes offline until it reads a number again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from drivers.base import InputPoint, Listeners, Observation, OutputPoint, PointError, PointUnavailable, ReadingListener
from drivers.modbus_spec import ModbusAddress, ModbusPointSpec, ModbusSensorSpec, describe, is_number

log = logging.getLogger(__name__)

MAX_READ = {"coil": 2000, "discrete": 2000, "holding": 125, "input": 125}  # protocol limits per request


class Link(Protocol):
    """What points need of their link (:class:`drivers.modbus.ModbusLink`)."""

    name: str

    async def read(self, at: ModbusAddress) -> Any: ...

    async def write(self, at: ModbusAddress, value: Any) -> None: ...

    def detach(self, point: Any) -> None: ...


# -- points ------------------------------------------------------------------------------------
class ModbusInput(InputPoint):
    """A coil, discrete input or register, observed by polling."""

    max_gap = 0  # unused registers a poll may read across to reach this point (meters set it)

    def __init__(self, name: str, link: Link, at: ModbusAddress) -> None:
        super().__init__(name)
        self.link = link  # the bus it is read on
        self.at = at  # where it is read
        self.exception: str | None = None  # the last poll got an exception reply about this point
        self.invalid: str | None = None  # the last poll read no number here (NaN, inf): why
        self.read_at: float | None = None  # time.monotonic() of the last poll that read a number here

    @property
    def source(self) -> ModbusAddress:
        """The address polled for this point's value."""
        return self.at

    def close(self) -> None:
        super().close()
        self.link.detach(self)

    def from_raw(self, value: Any) -> Any:
        """The point's value for what was read at :attr:`source`."""
        return value

    async def _read(self) -> Any:
        value = await self.link.read(self.source)
        if not is_number(value):
            raise PointError(f"{describe(self.source)} holds no number ({value})", address=describe(self.source))
        return self.from_raw(value)


class ModbusOutput(ModbusInput, OutputPoint):
    """A coil or holding register that is written, and read back to confirm it.

    With a ``verify`` address the value is read there instead (a status input,
    the drive's actual speed); for a switched coil the verify reading is mapped
    to on/off with the configured values, and anything else reads as None.
    """

    readback_source = "modbus-readback"

    def __init__(self, name: str, link: Link, spec: ModbusPointSpec, safe: Any) -> None:
        super().__init__(name, link, spec.at)
        self.spec = spec  # at, verify, verify_on, verify_off
        self.safe = safe  # written at start, after a failure and at shutdown; None: never forced
        self.last_raw: Any = None  # what the last read-back actually read
        if spec.verify is not None:
            self.readback_source = "modbus-verify"

    @property
    def source(self) -> ModbusAddress:
        return self.spec.verify or self.spec.at

    def from_raw(self, value: Any) -> Any:
        self.last_raw = value
        if self.spec.verify is None or self.spec.at.table != "coil":
            return value
        if value == self.spec.verify_on:
            return True
        if value == self.spec.verify_off:
            return False
        return None  # neither on nor off: a mismatch whatever was commanded

    def readback_evidence(self) -> dict[str, Any]:
        return {"address": describe(self.source), "raw": self.last_raw}

    async def _write(self, value: Any) -> None:
        await self.link.write(self.spec.at, value)


# -- polling plan ------------------------------------------------------------------------------
@dataclass
class ReadGroup:
    """Addresses of one device and table, read in one request."""

    device_id: int
    table: str
    start: int
    count: int
    members: list[ModbusInput] = field(default_factory=list)
    max_gap: int = 0  # unused registers this read may span (the least any member allows)


def plan_reads(points: list[ModbusInput]) -> list[ReadGroup]:
    """Coalesce the points' addresses into as few reads as their addresses allow: contiguous (or
    overlapping) ranges of one device and table merge, and so do ranges at most ``max_gap`` unused
    registers apart when every point involved allows it; no read exceeds the protocol's limit."""
    by_key: dict[tuple[int, str], list[ModbusInput]] = {}
    for point in points:
        by_key.setdefault((point.source.device_id, point.source.table), []).append(point)
    groups: list[ReadGroup] = []
    for (device_id, table), members in sorted(by_key.items()):
        members.sort(key=lambda p: p.source.address)
        current: ReadGroup | None = None
        for point in members:
            at = point.source
            end = at.address + at.width
            if current is not None and end - current.start <= MAX_READ[table]:
                gap = at.address - (current.start + current.count)
                if gap <= 0 or gap <= min(current.max_gap, point.max_gap):
                    current.count = max(current.count, end - current.start)
                    current.members.append(point)
                    current.max_gap = min(current.max_gap, point.max_gap)
                    continue
            current = ReadGroup(device_id, table, at.address, at.width, [point], point.max_gap)
            groups.append(current)
    return groups


# -- a meter: a sensor's values on one device ----------------------------------------------------
class MeterValue(ModbusInput):
    """One named value of a Modbus sensor: read by the link's polls, never on its own."""

    def __init__(self, name: str, link: Link, at: ModbusAddress, unit: str, max_gap: int,
                 meter: ModbusMeter) -> None:
        super().__init__(name, link, at)
        self.unit = unit  # "kWh", or ""
        self.max_gap = max_gap
        self.meter = meter  # the sensor's source it belongs to
        self.online, self.offline_since, self.offline_reason = False, time.time(), "not read yet"

    async def refresh(self) -> Observation:
        """The last value the polls read, if it is current."""
        if self.last is None or not self.online:
            raise PointUnavailable(self.offline_reason or "not read yet")
        return self.last

    def close(self) -> None:
        super().close()
        self.meter.close()


class ModbusMeter:
    """A sensor's named values on one Modbus device (a :class:`drivers.base.ReadingSource`).

    The link calls :meth:`round_done` after every poll round; a round that read every value
    with a number is one reading for the listeners.
    """

    def __init__(self, device: str, link: Link, spec: ModbusSensorSpec) -> None:
        self.spec = spec
        self.values: dict[str, InputPoint] = {
            name: MeterValue(f"{device}.{name}", link, value.at, value.quantity.unit, spec.max_gap, self)
            for name, value in spec.values.items()}
        self._listeners: Listeners[[dict[str, float], float]] = Listeners(f"{device} readings")
        self.closed = False  # its device closed it: the link forgets it

    @property
    def points(self) -> list[MeterValue]:
        return [p for p in self.values.values() if isinstance(p, MeterValue)]

    def listen_readings(self, listener: ReadingListener) -> Callable[[], None]:
        return self._listeners.add(listener)

    def round_done(self, started: float) -> None:
        """A poll round that began at *started* (monotonic) is over: announce it if it read us."""
        points = self.points
        if self.closed or not all(p.online and p.read_at is not None and p.read_at >= started for p in points):
            return
        self._listeners.emit({name: point.value for name, point in self.values.items()}, time.time())

    def close(self) -> None:
        self.closed = True
        self._listeners.clear()
