"""Serial line sensors on pyserial: a reader thread per port, readings pushed into the loop.

The thread owns the port: it opens it, optionally sends a request command,
reads lines into a bounded buffer, parses them with the configured regex and
hands each valid reading to the event loop with ``call_soon_threadsafe``.
Nothing here blocks the loop.

- A line longer than ``max_line`` bytes (or that much data without a
  newline) is counted as malformed and discarded up to the next newline: the
  buffer never holds more than ``max_line`` bytes.
- A line that does not match, is not UTF-8, or whose groups are not numbers
  is counted and skipped.
- No valid reading for ``stale_after`` seconds: the values go offline. That is
  also the start-up grace: a sensor that has not yet had time to print its
  first line is not offline (it has no value yet); one whose port cannot be
  opened is, at once.
- The port vanishes or a read raises (a USB adapter pulled): offline, close,
  and reopen the *same path* with a backoff doubling from 0.1 s to 1 s, as a
  ``/dev/serial/by-id`` symlink comes back when the adapter is plugged in.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import re
import threading
import time
from dataclasses import dataclass

import serial

from drivers.backoff import Backoff
from drivers.base import Quantity, SpecTable
from drivers.reader import SensorValue, ThreadedSource

log = logging.getLogger(__name__)

READ_TIMEOUT = 0.2  # seconds a read may block, so the thread notices a stop request
CHUNK = 4096  # most bytes taken from the port per read
BACKOFF_START = 0.1  # first reopen delay; doubles
BACKOFF_MAX = 1.0  # reopen attempts at least this often (opening a missing path costs nothing)
WRITE_TIMEOUT = 1.0  # a request write that cannot go out in this long fails (the port is gone)
PARITY = {"none": "N", "even": "E", "odd": "O"}


# -- spec: what the config says about a serial sensor ------------------------------------------
@dataclass(frozen=True)
class SerialSensorSpec:
    """A line-oriented sensor on a serial port, parsed by a regex with named groups."""

    port: str  # /dev/serial/by-id/... (or any pyserial URL)
    baudrate: int
    bytesize: int
    parity: str  # "N", "E" or "O"
    stopbits: int
    pattern: re.Pattern[str]  # named groups = the values
    units: dict[str, str]  # group name -> unit ("" when none given)
    request: bytes | None  # sent to ask for a reading, or None for sensors that talk by themselves
    request_interval: float  # seconds between requests
    stale_after: float  # no valid reading for this long = offline
    max_line: int  # longer lines (or that much data without a newline) are malformed

    bus_kind = "serial"  # the driver that reads it

    @property
    def bus_key(self) -> str:
        """A port is not shared: the daemon makes one bus per sensor device (not looked up)."""
        return f"serial:{self.port}"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.pattern.groupindex)

    @property
    def quantities(self) -> dict[str, Quantity]:
        return {name: Quantity(self.units.get(name, "")) for name in self.names}


def read_sensor(t: SpecTable) -> SerialSensorSpec | None:
    """The serial keys of a sensor device: port, framing, pattern, units, request, stale_after."""
    port = t.string("port")
    baudrate = t.integer("baudrate", default=9600, low=50, high=4_000_000)
    bytesize = t.integer("bytesize", default=8, low=5, high=8)
    parity = t.string("parity", default="none", choices=tuple(PARITY))
    stopbits = t.integer("stopbits", default=1, low=1, high=2)
    pattern_text = t.string("pattern")
    pattern = None
    if pattern_text is not None:
        try:
            pattern = re.compile(pattern_text)
        except re.error as exc:
            t.problem("pattern", f"invalid regular expression: {exc}")
        else:
            if not pattern.groupindex:
                t.problem("pattern", "needs at least one named group, e.g. T=(?P<temp>-?[0-9.]+)")
                pattern = None
    units_table = t.table("units")
    units: dict[str, str] = {}
    if units_table is not None:
        for key in list(units_table.data):
            unit = units_table.string(key)
            if pattern is not None and key not in pattern.groupindex:
                units_table.problem(key, f"no group named {key!r} in pattern")
            elif unit is not None:
                units[key] = unit
        units_table.finish()
    request = t.string("request", default=None)
    request_bytes = None
    if request is not None:
        try:  # escapes such as \r\n also work inside a TOML literal string
            request_bytes = request.encode().decode("unicode_escape").encode("latin-1")
        except (UnicodeDecodeError, UnicodeEncodeError) as exc:
            t.problem("request", f"bad escape sequence: {exc.reason}")
            request = None
    interval = t.number("request_interval", default=1.0, high=3600.0)
    if t.has("request_interval") and request is None:
        t.problem("request_interval", "only meaningful with a request")
    stale = t.number("stale_after", default=5.0, high=86400.0)
    max_line = t.integer("max_line", default=256, low=16, high=65536)
    if pattern is None or None in (port, baudrate, bytesize, parity, stopbits, interval, stale, max_line) \
            or (t.has("request") and request_bytes is None):
        return None
    return SerialSensorSpec(
        port=port, baudrate=baudrate, bytesize=bytesize, parity=PARITY[parity], stopbits=stopbits,
        pattern=pattern, units={name: units.get(name, "") for name in pattern.groupindex},
        request=request_bytes,
        request_interval=interval, stale_after=stale, max_line=max_line,
    )

class SerialValue(SensorValue):
    """One named value (a regex group) of a serial sensor."""


class LineParser:
    """Bytes in, complete lines out, with a hard cap on what is held (thread-confined)."""

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line  # longest accepted line, bytes, without the newline
        self.buffer = bytearray()  # the current partial line
        self.discarding = False  # inside an overlong line: drop up to the next newline
        self.overlong = 0  # lines dropped for length
        self.high_water = 0  # most bytes ever buffered (never above max_line)

    def feed(self, chunk: bytes) -> list[bytes]:
        """The complete lines in *chunk* (without their newline)."""
        lines: list[bytes] = []
        while chunk:
            newline = chunk.find(b"\n")
            piece = chunk if newline < 0 else chunk[:newline]
            chunk = b"" if newline < 0 else chunk[newline + 1:]
            if not self.discarding:
                if len(self.buffer) + len(piece) > self.max_line:
                    self.overlong += 1
                    self.buffer.clear()
                    self.discarding = True
                else:
                    self.buffer += piece
                    self.high_water = max(self.high_water, len(self.buffer))
            if newline >= 0:
                if not self.discarding:
                    lines.append(bytes(self.buffer))
                self.buffer.clear()
                self.discarding = False
        return lines


class SerialSensor(ThreadedSource):
    """A sensor on one serial port; its named values are points (``<device>.<group>``).

    A :class:`drivers.base.Bus` made for one device (:attr:`owner`) and its
    :class:`drivers.base.ReadingSource`: its points are made with it, and it
    is stopped when its device goes.
    """

    kind = "serial"

    def __init__(self, device: str, spec: SerialSensorSpec) -> None:
        super().__init__(device, f"serial {spec.port}", spec.bus_key, {k: spec.units.get(k, "") for k in spec.names},
                         spec.stale_after, {"readings": 0, "malformed_lines": 0, "reopens": 0, "open_failures": 0})
        self.spec = spec
        self.opened: asyncio.Event | None = None  # set while the port is open (pyserial flushes input on open)
        self._port: serial.SerialBase | None = None  # the open port, for cancel_read at shutdown
        self._port_lock = threading.Lock()
        self._parser = LineParser(spec.max_line)
        self._good_session = False  # the current port session produced a valid reading (reader thread)

    @property
    def buffer_high_water(self) -> int:
        """Most bytes the line buffer ever held: proof that garbage does not grow memory."""
        return self._parser.high_water

    def _started(self) -> None:
        self.opened = asyncio.Event()

    def _interrupt(self) -> None:
        with self._port_lock:
            if self._port is not None:
                with contextlib.suppress(Exception):  # not every pyserial URL handler can cancel
                    self._port.cancel_read()  # type: ignore[attr-defined]  # a Serial, not the base

    # -- reader thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        opened = self.opened
        assert opened is not None  # made by start() before the thread
        backoff = Backoff(BACKOFF_START, BACKOFF_MAX)
        opened_before = False
        reported = None  # the last reason sent to the loop, so an outage is logged once
        while not self._stop.is_set():
            self._beat_now()
            try:
                port = self._open()
            except (serial.SerialException, OSError, ValueError) as exc:
                self._counts["open_failures"] += 1
                missing = getattr(exc, "errno", None) == errno.ENOENT
                reason = "port missing (unplugged?)" if missing else f"cannot open: {exc}"
                if reported != "open":
                    log.warning("%s: %s", self.name, reason)
                    self._lost(reason)
                    reported = "open"
                self._stop.wait(backoff.next())
                continue
            if opened_before:
                self._counts["reopens"] += 1
                log.info("%s: reopened", self.name)
            opened_before = True
            self._to_loop(opened.set)
            reported = None
            self._good_session = False
            try:
                self._read_lines(port)
            except (serial.SerialException, OSError) as exc:
                if not self._stop.is_set():
                    log.warning("%s: port lost: %s", self.name, exc)
                    self._lost(f"port lost: {exc}")
                    reported = "lost"
            finally:
                self._to_loop(opened.clear)
                with self._port_lock:
                    self._port = None
                with contextlib.suppress(Exception):
                    port.close()
            if self._good_session:  # it worked for a while: start the backoff afresh
                backoff.reset()
            self._stop.wait(backoff.next())

    def _open(self) -> serial.SerialBase:
        s = self.spec
        port = serial.serial_for_url(s.port, baudrate=s.baudrate, bytesize=s.bytesize, parity=s.parity,
                                     stopbits=s.stopbits, timeout=READ_TIMEOUT, write_timeout=WRITE_TIMEOUT,
                                     do_not_open=True)
        if hasattr(port, "exclusive"):
            with contextlib.suppress(ValueError):
                port.exclusive = True  # a second reader on one port would steal lines
        port.open()
        with self._port_lock:
            if self._stop.is_set():
                port.close()
                raise serial.SerialException("stopping")
            self._port = port
        return port

    def _read_lines(self, port: serial.SerialBase) -> None:
        """Read until stopped or the port fails; sets ``_good_session`` on a valid reading."""
        request, interval = self.spec.request, self.spec.request_interval
        next_request = time.monotonic()
        self._parser.buffer.clear()
        self._parser.discarding = False
        while not self._stop.is_set():
            self._beat_now()
            if request is not None and time.monotonic() >= next_request:
                port.write(request)
                next_request = time.monotonic() + interval
            chunk = port.read(max(1, min(port.in_waiting, CHUNK)))  # type: ignore[attr-defined]
            if not chunk:
                continue
            before = self._parser.overlong
            for line in self._parser.feed(chunk):
                if self._parse(line):
                    self._good_session = True
            if self._parser.overlong != before:
                self._counts["malformed_lines"] += self._parser.overlong - before
                log.debug("%s: discarded a line longer than %d bytes", self.name, self.spec.max_line)

    def _parse(self, raw: bytes) -> bool:
        line = raw.rstrip(b"\r")
        if not line.strip():
            return False  # blank lines (a CR LF pair split oddly, keep-alives) are not readings
        values: dict[str, float] = {}
        try:
            text = line.decode("utf-8")
            match = self.spec.pattern.search(text)
            if match is not None:
                values = {k: float(v) for k, v in match.groupdict().items() if v is not None}
            if not all(math.isfinite(v) for v in values.values()):
                values = {}
        except (UnicodeDecodeError, ValueError):
            values = {}
        if not values:
            self._counts["malformed_lines"] += 1
            log.debug("%s: skipped a malformed line: %r", self.name, line[:80])
            return False
        self._counts["readings"] += 1
        self._reading(values)
        return True
