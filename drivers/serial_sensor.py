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
- No valid reading for ``stale_after`` seconds: the values go offline.
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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import serial

from drivers.backoff import Backoff
from drivers.base import InputPoint, Listeners, Observation, Point, PointUnavailable, SpecTable

log = logging.getLogger(__name__)

READ_TIMEOUT = 0.2  # seconds a read may block, so the thread notices a stop request
CHUNK = 4096  # most bytes taken from the port per read
BACKOFF_START = 0.1  # first reopen delay; doubles
BACKOFF_MAX = 1.0  # reopen attempts at least this often (opening a missing path costs nothing)
JOIN_DEADLINE = 2.0  # seconds stop() waits for the reader thread
WRITE_TIMEOUT = 1.0  # a request write that cannot go out in this long fails (the port is gone)
WEDGED_AFTER = 30.0  # a reader thread whose loop has not turned for this long is stuck
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

ReadingListener = Callable[[dict[str, float], float], None]


class SerialValue(InputPoint):
    """One named value (a regex group) of a serial sensor."""

    def __init__(self, name: str, key: str, unit: str) -> None:
        super().__init__(name)
        self.key = key  # the regex group
        self.unit = unit  # "°C", or "" when none was configured
        self.sensor: SerialSensor | None = None  # the port it is read from

    async def refresh(self) -> Observation:
        """There is nothing to ask a talking sensor: the last reading, if it is current."""
        if self.last is None or not self.online:
            raise PointUnavailable(self.offline_reason or "no reading yet")
        return self.last

    async def _read(self) -> Any:  # pragma: no cover - refresh() is overridden
        raise PointUnavailable("a serial sensor cannot be read on demand")


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


class SerialSensor:
    """A sensor on one serial port; its named values are points (``<device>.<group>``).

    A :class:`drivers.base.Bus` made for one device (:attr:`owner`): its
    points are made with it, and it is stopped when its device goes.
    """

    kind = "serial"

    def __init__(self, device: str, spec: SerialSensorSpec) -> None:
        self.spec = spec
        self.name = f"serial {spec.port}"  # for logs and metrics
        self.key = spec.bus_key  # one bus per port
        self.owner: str | None = device  # the device this bus exists for
        self.values = {key: SerialValue(f"{device}.{key}", key, spec.units.get(key, "")) for key in spec.names}
        for point in self.values.values():
            point.sensor = self
        for point in self.values.values():
            point.online, point.offline_since, point.offline_reason = False, time.time(), "no reading yet"
        self._listeners: Listeners[[dict[str, float], float]] = Listeners(f"{self.name} readings")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._exited: asyncio.Event | None = None
        self.opened: asyncio.Event | None = None  # set while the port is open (pyserial flushes input on open)
        self._port: serial.SerialBase | None = None  # the open port, for cancel_read at shutdown
        self._port_lock = threading.Lock()
        self._stale: asyncio.TimerHandle | None = None
        self._parser = LineParser(spec.max_line)
        self._good_session = False  # the current port session produced a valid reading (reader thread)
        self._beat = time.monotonic()  # the reader thread's last turn (for wedged())
        self.wedged_after = WEDGED_AFTER  # seconds without a turn before wedged() says so
        self._counts = {"readings": 0, "malformed_lines": 0, "reopens": 0, "open_failures": 0}

    @property
    def points(self) -> list[SerialValue]:
        return list(self.values.values())

    @property
    def buffer_high_water(self) -> int:
        """Most bytes the line buffer ever held: proof that garbage does not grow memory."""
        return self._parser.high_water

    def counters(self) -> dict[str, int]:
        return dict(self._counts)

    def attach(self, point: Point) -> None:
        """The values are made with the sensor; only they belong to it."""
        if point not in self.values.values():
            raise TypeError(f"{point.name} is not a value of {self.name}")

    def detach(self, point: Point) -> None:
        """Nothing to re-plan: the sensor talks by itself (its owner's closing stops it)."""

    def wedged(self) -> str | None:
        """The reader thread died, or its loop (which turns at least every read timeout) stopped."""
        thread = self._thread
        if thread is None or self._stop.is_set():
            return None
        if not thread.is_alive():
            return "reader thread ended"
        stalled = time.monotonic() - self._beat
        if stalled > self.wedged_after:
            return f"reader thread stuck for {stalled:.0f} s"
        return None

    def listen_readings(self, listener: ReadingListener) -> Callable[[], None]:
        """Call *listener(values, at)* on the loop for every valid line; returns its unsubscribe."""
        return self._listeners.add(listener)

    # -- lifecycle (loop thread) ------------------------------------------------------------------
    async def start(self) -> None:
        """Start the reader thread (once: starting a running sensor does nothing)."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._exited = asyncio.Event()
        self.opened = asyncio.Event()
        self._arm_stale()
        self._thread = threading.Thread(target=self._run, name=f"pictl {self.name}", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Stop the reader thread (unblocking its read) and wait for it, with a deadline."""
        self._stop.set()
        with self._port_lock:
            if self._port is not None:
                with contextlib.suppress(Exception):  # not every pyserial URL handler can cancel
                    self._port.cancel_read()  # type: ignore[attr-defined]  # a Serial, not the base
        if self._stale is not None:
            self._stale.cancel()
        if self._thread is not None and self._exited is not None:
            try:
                async with asyncio.timeout(JOIN_DEADLINE):
                    await self._exited.wait()
            except TimeoutError:
                log.warning("%s: reader thread did not stop within %.0f s", self.name, JOIN_DEADLINE)
            self._thread.join(0.1)
        for point in self.values.values():
            point.close()

    # -- loop side ------------------------------------------------------------------------------
    def _arm_stale(self) -> None:
        if self._stale is not None:
            self._stale.cancel()
        assert self._loop is not None
        self._stale = self._loop.call_later(self.spec.stale_after, self._on_stale)

    def _on_stale(self) -> None:
        self._stale = None
        if any(p.online for p in self.values.values()):
            self._set_offline(f"no valid reading for {self.spec.stale_after:g} s")

    def _set_offline(self, reason: str) -> None:
        for point in self.values.values():
            point.set_online(False, f"{self.name}: {reason}")

    def _deliver(self, values: dict[str, float], at: float, mono: float) -> None:
        if self._stop.is_set():
            return
        for key, value in values.items():
            self.values[key].observe(value, at, mono)
        for point in self.values.values():  # a valid line: the sensor is there (optional groups too)
            point.set_online(True)
        self._arm_stale()
        self._listeners.emit(values, at)

    def _to_loop(self, callback: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed between the check and the call
                loop.call_soon_threadsafe(callback, *args)

    # -- reader thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        opened = self.opened
        assert opened is not None  # made by start() before the thread
        backoff = Backoff(BACKOFF_START, BACKOFF_MAX)
        opened_before = False
        reported = None  # the last reason sent to the loop, so an outage is logged once
        try:
            while not self._stop.is_set():
                self._beat = time.monotonic()
                try:
                    port = self._open()
                except (serial.SerialException, OSError, ValueError) as exc:
                    self._counts["open_failures"] += 1
                    missing = getattr(exc, "errno", None) == errno.ENOENT
                    reason = "port missing (unplugged?)" if missing else f"cannot open: {exc}"
                    if reported != "open":
                        log.warning("%s: %s", self.name, reason)
                        self._to_loop(self._set_offline, reason)
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
                        self._to_loop(self._set_offline, f"port lost: {exc}")
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
        except Exception:  # a bug: the watchdog learns of it through wedged() ("reader thread ended")
            log.exception("%s: reader thread failed", self.name)
        finally:
            if self._exited is not None:
                self._to_loop(self._exited.set)

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
            self._beat = time.monotonic()
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
        self._to_loop(self._deliver, values, time.time(), time.monotonic())
        return True
