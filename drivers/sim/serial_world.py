"""A simulated serial sensor: a pseudo-terminal that emits lines, behind a stable symlink.

The driver opens ``path``, a symlink that the simulator points at the
pseudo-terminal's slave side, exactly as udev points
``/dev/serial/by-id/usb-...`` at ``/dev/ttyUSB0``. Unplugging closes the
terminal and removes the link (the driver's reads fail, then its reopen
attempts find nothing); plugging in makes a new terminal and points the same
link at it. Everything runs on the event loop: writes to the master side are
non-blocking, and a line that does not fit (nobody reading) is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass

from drivers.serial_sensor import SerialSensorSpec

log = logging.getLogger(__name__)

SENSOR_PERIOD_S = 0.5  # a simulated serial sensor's line interval


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class SimSerialSensor:
    """A sensor that writes one line every *period* seconds while plugged in."""

    def __init__(self, loop: asyncio.AbstractEventLoop, path: str, line: Callable[[], bytes],
                 period: float = 0.5) -> None:
        self.loop = loop
        self.path = path  # the stable symlink the driver opens
        self.line = line  # makes the next line, newline included
        self.period = period  # seconds between lines
        self.lines_sent = 0  # lines written to the terminal
        self._master: int | None = None  # our end of the terminal
        self._slave: int | None = None  # held open so the terminal lives while the driver reopens
        self._task: asyncio.Task[None] | None = None

    @property
    def plugged(self) -> bool:
        return self._master is not None

    def plug(self) -> None:
        """A new terminal, and the symlink pointed at it (atomically)."""
        if self.plugged:
            return
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        tmp = f"{self.path}.new"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(os.ttyname(slave), tmp)
        os.replace(tmp, self.path)
        if self._task is None:
            self._task = self.loop.create_task(self._emit(), name=f"sim serial {self.path}")
        log.info("simulated serial sensor plugged in at %s -> %s", self.path, os.ttyname(slave))

    def unplug(self) -> None:
        """The adapter is pulled: the link disappears and the terminal closes."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        for fd in (self._master, self._slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = None

    def write(self, data: bytes) -> int:
        """Write what fits now; returns the number of bytes taken (0 when unplugged or full)."""
        if self._master is None:
            return 0
        try:
            return os.write(self._master, data)
        except (BlockingIOError, OSError):
            return 0

    async def send(self, data: bytes) -> None:
        """Write all of *data*, waiting for the reader to make room (tests: garbage floods)."""
        view = memoryview(data)
        while view:
            if self._master is None:
                raise OSError("unplugged")
            taken = self.write(bytes(view[:65536]))
            if taken:
                view = view[taken:]
                continue
            ready = self.loop.create_future()
            fd = self._master
            self.loop.add_writer(fd, _settle, ready)
            try:
                await ready
            finally:
                self.loop.remove_writer(fd)

    async def _emit(self) -> None:
        while True:
            if self._master is not None and self.write(self.line()):
                self.lines_sent += 1
            await asyncio.sleep(self.period)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.unplug()


@dataclass
class UnplugFault:
    """``sim.fault DEVICE unplugged``: the terminal goes away; clearing plugs in a new one."""

    sensor: SimSerialSensor

    def inject(self) -> None:
        self.sensor.unplug()

    def clear(self) -> None:
        self.sensor.plug()


def sensor_lines(spec: SerialSensorSpec) -> Callable[[], bytes]:
    """Lines a sensor with *spec*'s pattern would send: ``T=21.4`` style if the pattern takes it."""
    names = spec.names
    start = time.monotonic()
    formats: list[Callable[[list[tuple[str, float]]], str]] = [
        lambda vals: " ".join(f"{n[0].upper()}={v:.1f}" for n, v in vals),
        lambda vals: " ".join(f"{n}={v:.1f}" for n, v in vals),
        lambda vals: ",".join(f"{v:.1f}" for _n, v in vals),
        lambda vals: " ".join(f"{v:.1f}" for _n, v in vals),
    ]
    chosen = formats[0]
    for fmt in formats:
        match = spec.pattern.search(fmt([(n, 21.5) for n in names]))
        if match and all(match.group(n) is not None for n in names):
            chosen = fmt
            break
    else:
        log.warning("the simulated sensor's lines (%r) do not match its pattern: it will look stale",
                    chosen([(n, 21.5) for n in names]))

    def line() -> bytes:
        t = time.monotonic() - start
        values = [(n, 21.0 + 10 * i + 0.5 * math.sin(t / 20 + i)) for i, n in enumerate(names)]
        return (chosen(values) + "\r\n").encode()

    return line
