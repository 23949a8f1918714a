"""1-Wire thermometers (DS18B20 and kin) through the kernel's w1 bus: ``w1_slave`` files.

With ``dtoverlay=w1-gpio`` the kernel lists each sensor under
``/sys/bus/w1/devices/<id>/`` and produces its ``w1_slave`` file when it is
read: the conversion takes up to 750 ms, during which the read blocks. So a
thread of its own reads it (:class:`drivers.reader.ThreadedSource`), every
``interval`` seconds, and pushes each valid temperature into the loop.

The file holds two lines, the scratchpad bytes then the kernel's CRC verdict,
and the same bytes then the temperature in millidegrees::

    72 01 4b 46 7f ff 0e 10 57 : crc=57 YES
    72 01 4b 46 7f ff 0e 10 57 t=23125

What is never published (each is counted, and the value goes stale if it lasts):

- a CRC that failed (``NO``): noise on a long cable, a weak pull-up;
- ``t=85000``: the DS18B20's power-on value, read before its first conversion
  (a sensor that just came back, or lost power for a moment);
- a scratchpad of all zeros (a shorted data line reads as zeros, whose CRC is
  zero too: a "valid" 0 °C);
- a file that is not two complete lines (read while it was being written);
- a temperature outside the sensor's range (-55 to 125 °C), NaN or infinite.

A sensor missing from ``w1_dir`` (unplugged, or dropped off the bus) is
offline at once and read again every ``interval`` until it returns.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import re
import time
from dataclasses import dataclass

from drivers.base import Quantity, SpecTable
from drivers.reader import ThreadedSource

log = logging.getLogger(__name__)

W1_DIR = "/sys/bus/w1/devices"  # where the kernel lists 1-Wire slaves
SENSOR_ID = re.compile(r"(10|22|28|3b|42)-[0-9a-f]{12}")  # families: DS18S20, DS1822, DS18B20, MAX31850, DS28EA00
POWER_ON_MILLI = 85000  # a DS18B20's scratchpad before its first conversion
RANGE_C = (-55.0, 125.0)  # what the sensors measure
CONVERSION_S = 0.75  # a 12-bit conversion: how long one read of w1_slave may block
MAX_FILE = 256  # a w1_slave file is about 80 bytes; more is not one
_CRC_LINE = re.compile(r"((?:[0-9a-f]{2} ){9}): crc=[0-9a-f]{2} (YES|NO)", re.IGNORECASE)
_T_LINE = re.compile(r"((?:[0-9a-f]{2} ){9})t=(-?[0-9]+)", re.IGNORECASE)
VALUE = "temperature"  # the one value a thermometer has


@dataclass(frozen=True)
class OneWireSpec:
    """A 1-Wire thermometer, by its id, in the kernel's w1 device directory."""

    sensor_id: str  # "28-0316a2794eff": family code, then the serial number
    w1_dir: str  # /sys/bus/w1/devices (a tree shaped like it under --simulate and in tests)
    interval: float  # seconds between reads (a read itself takes up to 0.75 s)
    stale_after: float  # no valid reading for this long = offline

    bus_kind = "onewire"  # the driver that reads it

    @property
    def bus_key(self) -> str:
        """A sensor is not shared: the daemon makes one bus per thermometer (not looked up)."""
        return f"onewire:{self.sensor_id}"

    @property
    def path(self) -> str:
        return os.path.join(self.w1_dir, self.sensor_id, "w1_slave")

    @property
    def quantities(self) -> dict[str, Quantity]:
        return {VALUE: Quantity("°C", "temperature", "measurement")}


def read_sensor(t: SpecTable) -> OneWireSpec | None:
    """``onewire = "28-..."``, ``w1_dir``, ``interval`` and ``stale_after`` of a sensor device."""
    sensor_id = t.string("onewire")
    if sensor_id is not None and not SENSOR_ID.fullmatch(sensor_id):
        t.problem("onewire", "a thermometer's id is its family (10, 22, 28, 3b or 42), a dash and 12 hex digits "
                  "in lower case, as listed in /sys/bus/w1/devices (e.g. 28-0316a2794eff)")
        sensor_id = None
    w1_dir = t.string("w1_dir", default=W1_DIR)
    interval = t.number("interval", default=5.0, high=3600.0)
    # A read itself takes up to a conversion: three reads' worth, however short the interval.
    stale_after = t.number("stale_after", default=3 * max(interval or 5.0, CONVERSION_S), high=86400.0)
    if interval is not None and stale_after is not None and stale_after <= interval:
        t.problem("stale_after", f"must be longer than interval ({interval:g} s), or every reading is stale")
        stale_after = None
    if None in (sensor_id, w1_dir, interval, stale_after):
        return None
    return OneWireSpec(sensor_id=sensor_id, w1_dir=w1_dir, interval=interval, stale_after=stale_after)


class Rejected(ValueError):
    """A ``w1_slave`` file that carries no temperature to publish; ``counter`` says why."""

    def __init__(self, counter: str, reason: str) -> None:
        super().__init__(reason)
        self.counter = counter  # the bus counter it is counted under


def parse_w1_slave(text: str) -> float:
    """The temperature in °C from the text of a ``w1_slave`` file, or :class:`Rejected`."""
    lines = text.split("\n")
    if len(lines) != 3 or lines[2] != "":
        raise Rejected("incomplete_reads", "not two complete lines (read while being written?)")
    crc, temp = _CRC_LINE.fullmatch(lines[0].strip()), _T_LINE.fullmatch(lines[1].strip())
    if crc is None or temp is None:
        raise Rejected("malformed_reads", "not the w1_slave format")
    if crc.group(2).upper() != "YES":
        raise Rejected("crc_errors", "CRC check failed")
    if crc.group(1) != temp.group(1):
        raise Rejected("malformed_reads", "the two lines carry different scratchpads")
    if set(crc.group(1).split()) == {"00"}:
        raise Rejected("malformed_reads", "scratchpad all zeros (data line shorted?)")
    milli = int(temp.group(2))
    if milli == POWER_ON_MILLI:
        raise Rejected("power_on_values", "85 °C power-on value (no conversion yet)")
    celsius = milli / 1000.0
    if not math.isfinite(celsius) or not RANGE_C[0] <= celsius <= RANGE_C[1]:
        raise Rejected("malformed_reads", f"{celsius:g} °C is outside the sensor's range")
    return celsius


def read_once(path: str) -> str:
    """The file's text from one read() (it blocks while the sensor converts): the kernel makes the
    whole file at once, so a second read could only ever meet the next conversion."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, MAX_FILE).decode("ascii", errors="replace")
    finally:
        os.close(fd)


class OneWireThermometer(ThreadedSource):
    """A DS18B20 (or kin) read from its ``w1_slave`` file every ``interval`` seconds."""

    kind = "onewire"

    def __init__(self, device: str, spec: OneWireSpec) -> None:
        super().__init__(device, f"1-Wire {spec.sensor_id}", spec.bus_key, {VALUE: spec.quantities[VALUE].unit},
                         spec.stale_after, {"readings": 0, "crc_errors": 0, "power_on_values": 0,
                                            "incomplete_reads": 0, "malformed_reads": 0, "missing": 0})
        self.spec = spec
        # A read blocks up to 0.75 s on a real bus; the loop is stuck if it has not turned in this long.
        self.wedged_after = max(self.wedged_after, 3 * spec.interval)

    def _run(self) -> None:
        missing = False  # reported as missing: log its return once
        while not self._stop.is_set():
            self._beat_now()
            started = time.monotonic()
            try:
                text = read_once(self.spec.path)
            except OSError as exc:
                self._counts["missing"] += 1
                if not missing:
                    gone = exc.errno in (errno.ENOENT, errno.ENODEV, errno.ENXIO)
                    reason = "sensor missing from the 1-Wire bus" if gone else f"cannot read w1_slave: {exc}"
                    log.warning("%s: %s", self.name, reason)
                    self._lost(reason)
                    missing = True
            else:
                if missing:
                    log.info("%s: back on the bus", self.name)
                    missing = False
                self._take(text)
            self._stop.wait(max(0.0, self.spec.interval - (time.monotonic() - started)))

    def _take(self, text: str) -> None:
        try:
            celsius = parse_w1_slave(text)
        except Rejected as exc:
            self._counts[exc.counter] += 1
            log.debug("%s: reading not published: %s", self.name, exc)
            return
        self._counts["readings"] += 1
        self._reading({VALUE: celsius})
