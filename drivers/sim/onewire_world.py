"""Simulated 1-Wire thermometers in a directory tree shaped like the kernel's ``/sys/bus/w1/devices``.

The kernel produces a sensor's ``w1_slave`` when it is read, after a
conversion of up to 750 ms during which the read blocks. Here each
``w1_slave`` is a named pipe served by a thread of the simulation: a read
(the real driver's ``open`` and ``read``) meets the thread, which waits the
conversion time (times the plant's time scale), then writes the two lines the
kernel would write. So every read gets a fresh answer, and faults act per read:

- ``crc``: every other read fails its CRC (``crc=.. NO``), as with noise on a
  long cable or a weak pull-up;
- ``missing``: the sensor's directory vanishes (unplugged); clearing the fault
  plugs it back in, and its first answer is the 85 °C power-on value;
- :meth:`SimThermometer.half_written`: the next reads stop mid-line, as a file
  read while it is being written.

The tree also holds ``w1_bus_master1`` and each sensor's ``name`` file, as the
kernel's does. Nothing here is imported by the driver; :meth:`aclose` leaves no
thread, pipe or directory behind.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import logging
import math
import os
import select
import shutil
import tempfile
import termios
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

CONVERSION_S = 0.75  # a DS18B20's 12-bit conversion: how long a read of w1_slave blocks
POWER_ON = bytes((0x50, 0x05, 0x4B, 0x46, 0x7F, 0xFF, 0x0C, 0x10))  # the scratchpad before any conversion
READER_GONE_S = 1.0  # how long an answer waits for its reader to take it


def crc8(data: bytes) -> int:
    """Dallas/Maxim 1-Wire CRC-8 (polynomial x^8 + x^5 + x^4 + 1, reflected), as the sensor computes it."""
    crc = 0
    for byte in data:
        for _ in range(8):
            mix = (crc ^ byte) & 1
            crc >>= 1
            if mix:
                crc ^= 0x8C
            byte >>= 1
    return crc


def w1_slave_text(scratchpad: bytes) -> bytes:
    """The two lines the kernel writes for 8 scratchpad bytes plus the CRC byte the sensor sent."""
    shown = " ".join(f"{b:02x}" for b in scratchpad)
    verdict = "YES" if crc8(scratchpad[:8]) == scratchpad[8] else "NO"
    raw = int.from_bytes(scratchpad[:2], "little", signed=True)
    milli = int(raw * 1000 / 16)  # the kernel's DS18B20 conversion (C division: towards zero)
    return f"{shown} : crc={crc8(scratchpad[:8]):02x} {verdict}\n{shown} t={milli}\n".encode()


def scratchpad(celsius: float) -> bytes:
    """A DS18B20's nine bytes for *celsius* (12-bit: 1/16 °C), its CRC last."""
    raw = round(celsius * 16)
    pad = raw.to_bytes(2, "little", signed=True) + bytes((0x4B, 0x46, 0x7F, 0xFF, 0x0C, 0x10))
    return pad + bytes((crc8(pad),))


class SimThermometer:
    """One DS18B20 on the simulated bus: ``<root>/<sensor_id>/w1_slave``, answered per read."""

    def __init__(self, root: str, sensor_id: str, temperature: Callable[[], float], conversion_s: float) -> None:
        self.root = root  # the simulated w1_dir
        self.sensor_id = sensor_id
        self.dir = os.path.join(root, sensor_id)
        self.path = os.path.join(self.dir, "w1_slave")
        self.temperature = temperature  # °C now
        self.conversion_s = conversion_s  # how long each read blocks
        self.crc_fault = False  # every other read fails its CRC
        self.answers = 0  # reads answered (whatever they said)
        self._half_written = 0  # the next this many answers stop mid-line
        self._power_on = False  # the next answer is the power-on value (a sensor just plugged in)
        self._present = threading.Event()  # the sensor is on the bus
        self._stop = threading.Event()
        self._lock = threading.Lock()  # plug/unplug against the thread's open
        self._generation = 0  # counts unplugs: a pipe opened before one is not the sensor's any more
        self._thread = threading.Thread(target=self._serve, name=f"sim 1-Wire {sensor_id}", daemon=True)
        self._thread.start()

    @property
    def present(self) -> bool:
        return self._present.is_set()

    def plug(self, power_on: bool = True) -> None:
        """The sensor appears on the bus; just powered (*power_on*), its first answer is 85 °C."""
        with self._lock:
            if self.present:
                return
            os.makedirs(self.dir, exist_ok=True)
            with open(os.path.join(self.dir, "name"), "w") as name:
                name.write(f"{self.sensor_id}\n")
            os.mkfifo(self.path)
            self._power_on = power_on
            self._present.set()

    def unplug(self) -> None:
        """The sensor vanishes: its directory goes; a read already waiting gets nothing."""
        with self._lock:
            if not self.present:
                return
            self._present.clear()
            self._generation += 1  # an answer being prepared for the old pipe is never given
            gone = f"{self.path}.gone"
            os.rename(self.path, gone)  # no new open finds it; whoever waits in open() is freed below
            _wake(gone, os.O_RDONLY)  # the thread, waiting for a reader
            _wake(gone, os.O_WRONLY)  # a reader, waiting for an answer that will not come
            shutil.rmtree(self.dir, ignore_errors=True)

    def half_written(self, reads: int = 1) -> None:
        """The next *reads* answers stop mid-line (a file read while it is being written)."""
        self._half_written += reads

    @property
    def half_written_left(self) -> int:
        """Answers still to be cut mid-line (a reader has not yet taken them)."""
        return self._half_written

    def close(self) -> None:
        """Stop answering (the files stay until the bus removes them)."""
        self._stop.set()
        self._present.set()  # wake a thread waiting for the sensor to come back
        _wake(self.path, os.O_RDONLY)
        self._thread.join(2.0)
        if self._thread.is_alive():
            log.warning("simulated 1-Wire %s: thread did not stop", self.sensor_id)
        _wake(self.path, os.O_WRONLY)

    # -- the thread: one answer per read -------------------------------------------------------
    def _serve(self) -> None:
        while not self._stop.is_set():
            self._present.wait()
            if self._stop.is_set():
                return
            generation = self._generation
            try:
                fd = os.open(self.path, os.O_WRONLY)  # blocks until a reader opens it
            except OSError:  # unplugged meanwhile
                self._stop.wait(0.01)
                continue
            try:
                self._answer(fd, generation)
            finally:
                os.close(fd)

    def _answer(self, fd: int, generation: int) -> None:
        if self._stop.wait(self.conversion_s) or generation != self._generation:
            return  # unplugged while converting: the reader gets an empty file
        number = self.answers + 1
        if self._power_on:
            text = w1_slave_text(POWER_ON + bytes((crc8(POWER_ON),)))
        else:
            pad = bytearray(scratchpad(self.temperature()))
            if self.crc_fault and number % 2 == 0:
                pad[0] ^= 0x04  # a bit flipped on the wire: the CRC no longer matches
            text = w1_slave_text(bytes(pad))
        half = self._half_written > 0
        if half:
            text = text[: len(text) * 2 // 3]  # stops inside the second line
        if self._give(fd, text):  # an answer nobody took did not happen: the next reader gets it
            self.answers = number
            self._power_on = False
            self._half_written -= half

    def _give(self, fd: int, text: bytes) -> bool:
        """Write *text* and close as soon as the reader has taken it, so that a reader opening after
        the close waits for the next answer, never for the rest of this one. (A driver that reopens
        within a millisecond of its read can still meet this writer and read an empty file: only
        when its interval is shorter than a conversion.) False when no reader took it."""
        try:
            os.write(fd, text)
        except BrokenPipeError:
            return False
        poller = select.poll()
        poller.register(fd, select.POLLERR)  # set once every reader has closed
        deadline = time.monotonic() + READER_GONE_S
        while time.monotonic() < deadline and not self._stop.is_set():
            if not _unread(fd):
                return True
            if poller.poll(0):
                return False  # its reader left without reading
            time.sleep(0.001)
        return False


def _unread(fd: int) -> int:
    """Bytes written to a pipe that its reader has not taken yet."""
    count = array.array("i", [0])
    try:
        fcntl.ioctl(fd, termios.FIONREAD, count)
    except OSError:
        return 0
    return count[0]


def _wake(fifo: str, flags: int) -> None:
    """Free whoever waits in open() on the other end of *fifo*: open this end without blocking, and
    close it (a reader then reads an empty file; a writer finds its reader gone)."""
    with contextlib.suppress(OSError):
        os.close(os.open(fifo, flags | os.O_NONBLOCK))


@dataclass
class MissingFault:
    """``sim.fault DEVICE missing``: the sensor vanishes from the bus; clearing plugs it back in."""

    sensor: SimThermometer

    def inject(self) -> None:
        self.sensor.unplug()

    def clear(self) -> None:
        self.sensor.plug()


@dataclass
class CrcFault:
    """``sim.fault DEVICE crc``: every other read fails its CRC."""

    sensor: SimThermometer

    def inject(self) -> None:
        self.sensor.crc_fault = True

    def clear(self) -> None:
        self.sensor.crc_fault = False


class SimW1Bus:
    """The simulated ``/sys/bus/w1/devices``: a temporary tree, one thermometer per device."""

    def __init__(self, time_scale: float) -> None:
        self.root = tempfile.mkdtemp(prefix="pictl-w1-")
        os.makedirs(os.path.join(self.root, "w1_bus_master1"))
        self.time_scale = time_scale
        self.sensors: dict[str, SimThermometer] = {}  # device name -> its thermometer

    def thermometer(self, device: str, sensor_id: str, around: float = 45.0) -> SimThermometer:
        """A plugged-in DS18B20 reading about *around* °C, drifting slowly."""
        start = time.monotonic()
        scale = self.time_scale

        def temperature() -> float:
            t = (time.monotonic() - start) / scale  # the plant's own clock
            return around + 1.5 * math.sin(t / 60.0)

        sensor = SimThermometer(self.root, sensor_id, temperature, CONVERSION_S * scale)
        sensor.plug(power_on=False)  # powered with the Pi: converted before the daemon's first read
        self.sensors[device] = sensor
        return sensor

    def remove(self, device: str) -> None:
        sensor = self.sensors.pop(device, None)
        if sensor is not None:
            sensor.close()
            shutil.rmtree(sensor.dir, ignore_errors=True)

    def close(self) -> None:
        for device in list(self.sensors):
            self.remove(device)
        shutil.rmtree(self.root, ignore_errors=True)
