"""A sensor whose reads block, read by a thread of its own: the part serial and 1-Wire share.

The thread does the blocking I/O (a serial port's ``read``, a 1-Wire
``w1_slave`` file that takes up to 750 ms to produce) and hands every valid
reading to the event loop with ``call_soon_threadsafe``; nothing here blocks
the loop. On the loop side the values are points that go offline when no
valid reading came for ``stale_after`` seconds (or when the thread reports the
hardware gone) and come back with the next valid reading. That is also the
start-up grace: a sensor that has not yet had time to read is not offline (it
has no value yet); one whose hardware is missing is, as soon as the thread
finds it missing.

A subclass implements :meth:`ThreadedSource._run` (the thread's loop: call
:meth:`_beat_now` at every turn, :meth:`_reading` for each valid reading,
:meth:`_lost` when the hardware is gone, and return once ``_stop`` is set) and
may override :meth:`_interrupt` to unblock a read at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from drivers.base import InputPoint, Listeners, Observation, Point, PointUnavailable, ReadingListener

log = logging.getLogger(__name__)

JOIN_DEADLINE = 2.0  # seconds stop() waits for the reader thread
WEDGED_AFTER = 30.0  # a reader thread whose loop has not turned for this long is stuck


class SensorValue(InputPoint):
    """One named value of a sensor read by a thread (a regex group, a temperature)."""

    def __init__(self, name: str, key: str, unit: str) -> None:
        super().__init__(name)
        self.key = key  # the value's name within its sensor
        self.unit = unit  # "°C", or "" when none was configured
        # Online, without a value, until the hardware is found missing or stale_after passes.

    async def refresh(self) -> Observation:
        """There is nothing to ask on demand: the last reading, if it is current."""
        if self.last is None or not self.online:
            raise PointUnavailable(self.offline_reason or "no reading yet")
        return self.last

    async def _read(self) -> Any:  # pragma: no cover - refresh() is overridden
        raise PointUnavailable("this sensor cannot be read on demand")


class ThreadedSource:
    """A :class:`drivers.base.Bus` made for one device (:attr:`owner`) and the
    :class:`drivers.base.ReadingSource` of that device: its values are made with it, and it
    is stopped when its device goes."""

    kind = ""  # the driver's bus kind ("serial", "onewire")

    def __init__(self, device: str, name: str, key: str, units: dict[str, str], stale_after: float,
                 counts: dict[str, int]) -> None:
        self.name = name  # for logs and metrics: "serial /dev/ttyUSB0"
        self.key = key  # one bus per port or sensor
        self.owner: str | None = device  # the device this bus exists for
        self.stale_after = stale_after  # no valid reading for this long: offline
        self.values: dict[str, InputPoint] = {k: SensorValue(f"{device}.{k}", k, u) for k, u in units.items()}
        self._listeners: Listeners[[dict[str, float], float]] = Listeners(f"{name} readings")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._exited: asyncio.Event | None = None
        self._stale: asyncio.TimerHandle | None = None
        self._beat = time.monotonic()  # the reader thread's last turn (for wedged())
        self.wedged_after = WEDGED_AFTER  # seconds without a turn before wedged() says so
        self._counts = counts  # event counts for metrics, kept by the thread

    @property
    def points(self) -> list[InputPoint]:
        return list(self.values.values())

    def counters(self) -> dict[str, int]:
        return dict(self._counts)

    def attach(self, point: Point) -> None:
        """The values are made with the sensor; only they belong to it."""
        if point not in self.values.values():
            raise TypeError(f"{point.name} is not a value of {self.name}")

    def detach(self, point: Point) -> None:
        """Nothing to re-plan: the thread reads by itself (its owner's closing stops it)."""

    def wedged(self) -> str | None:
        """The reader thread died, or its loop stopped turning (a read that never returns)."""
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
        """Call *listener(values, at)* on the loop for every valid reading; returns the undo."""
        return self._listeners.add(listener)

    # -- lifecycle (loop thread) ------------------------------------------------------------------
    async def start(self) -> None:
        """Start the reader thread (once: starting a running sensor does nothing)."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._exited = asyncio.Event()
        self._started()
        self._arm_stale()
        self._thread = threading.Thread(target=self._main, name=f"pictl {self.name}", daemon=True)
        self._thread.start()

    def _started(self) -> None:
        """Loop-side set-up before the thread starts (subclasses)."""

    async def stop(self) -> None:
        """Stop the reader thread (unblocking its read where possible) and wait for it, with a deadline."""
        self._stop.set()
        self._interrupt()
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

    def _interrupt(self) -> None:
        """Unblock the thread's read at shutdown, if the hardware allows it (subclasses)."""

    # -- loop side ------------------------------------------------------------------------------
    def _arm_stale(self) -> None:
        if self._stale is not None:
            self._stale.cancel()
        assert self._loop is not None
        self._stale = self._loop.call_later(self.stale_after, self._on_stale)

    def _on_stale(self) -> None:
        self._stale = None
        if any(p.online for p in self.values.values()):
            self._set_offline(f"no valid reading for {self.stale_after:g} s")

    def _set_offline(self, reason: str) -> None:
        for point in self.values.values():
            point.set_online(False, f"{self.name}: {reason}")

    def _deliver(self, values: dict[str, float], at: float, mono: float) -> None:
        if self._stop.is_set():
            return
        for key, value in values.items():
            self.values[key].observe(value, at, mono)
        for point in self.values.values():  # a valid reading: the sensor is there (optional values too)
            point.set_online(True)
        self._arm_stale()
        self._listeners.emit(values, at)

    def _to_loop(self, callback: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed between the check and the call
                loop.call_soon_threadsafe(callback, *args)

    # -- reader thread ----------------------------------------------------------------------------
    def _main(self) -> None:
        try:
            self._run()
        except Exception:  # a bug: the watchdog learns of it through wedged() ("reader thread ended")
            log.exception("%s: reader thread failed", self.name)
        finally:
            if self._exited is not None:
                self._to_loop(self._exited.set)

    def _run(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _beat_now(self) -> None:
        """The thread's loop turned (it is not stuck)."""
        self._beat = time.monotonic()

    def _reading(self, values: dict[str, float]) -> None:
        """A valid reading, seen now (reader thread)."""
        self._to_loop(self._deliver, values, time.time(), time.monotonic())

    def _lost(self, reason: str) -> None:
        """The hardware is gone for now: its values go offline at once (reader thread)."""
        self._to_loop(self._set_offline, reason)
