"""Points: the narrow surface between drivers and the controller.

A *point* is one named signal on a bus. An :class:`InputPoint` is observed (a
door contact, a feedback line, a serial reading); an :class:`OutputPoint` is
also written (a relay, a coil, a register) and can be read back.

Every change a driver sees becomes an :class:`Observation` delivered on the
asyncio loop thread, in order, to the point's listeners. A driver whose bus
delivers callbacks on other threads hands them over with
``loop.call_soon_threadsafe`` (see :meth:`Point.observe_threadsafe`).

A new driver *must* implement, for an input, the code that calls
:meth:`Point.observe` whenever the signal changes, and :meth:`Point._read`;
for an output, also :meth:`OutputPoint._write`. It *may* override
:meth:`Point.close`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, ParamSpec, Protocol

log = logging.getLogger(__name__)

Listener = Callable[["Observation"], None]
P = ParamSpec("P")


class Listeners(Generic[P]):
    """Who is told when something happens: the one listener list of pictl.

    :meth:`add` returns the unsubscribe, which the listener's owner keeps and calls when it goes
    (a closed device, a stopped bridge): nothing is left behind. :meth:`emit` calls each listener
    in the order added; one that raises is logged and skipped, never stopping delivery to the others.
    """

    __slots__ = ("_items", "what")

    def __init__(self, what: str) -> None:
        self.what = what  # for the log line of a failing listener: "door.contact observations"
        self._items: list[Callable[P, Any]] = []

    def add(self, listener: Callable[P, Any]) -> Callable[[], None]:
        """Call *listener* on every :meth:`emit` from now on; returns its unsubscribe (idempotent)."""
        self._items.append(listener)

        def unsubscribe() -> None:
            if listener in self._items:
                self._items.remove(listener)

        return unsubscribe

    def emit(self, *args: P.args, **kwargs: P.kwargs) -> None:
        for listener in tuple(self._items):
            try:
                listener(*args, **kwargs)
            except Exception:
                log.exception("a listener of %s failed; the others were told", self.what)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


class PointError(Exception):
    """A bus could not carry out a read or write on a point.

    ``observed`` says in a few words what was seen instead ("no reply within
    0.5 s", "exception reply 2 (illegal data address)"); ``evidence`` holds
    machine-readable details (address, raw value) for the caller.
    """

    def __init__(self, observed: str, **evidence: Any) -> None:
        super().__init__(observed)
        self.observed = observed  # short, for humans and error.data.observed
        self.evidence = evidence  # what the bus reported, for error.data.evidence


class PointUnavailable(PointError):
    """The bus is down (not connected, offline): nothing was sent."""


@dataclass(frozen=True, slots=True)
class Observation:
    """One value seen on a point, with when it was seen."""

    point: str  # the point's name, e.g. "door.contact"
    value: Any  # bool for digital points, a number for registers and readings
    at: float  # wall-clock time (time.time()) when the driver saw it
    mono: float  # time.monotonic() at the same instant, for durations


class Point:
    """A named signal with a last observed value and listeners.

    Listeners and expectations run on the event loop thread only.
    """

    def __init__(self, name: str) -> None:
        self.name = name  # "<device>.<role>", used as evidence source
        self.last: Observation | None = None  # most recent observation
        self._listeners: Listeners[[Observation]] = Listeners(f"{name} observations")
        self._loop: asyncio.AbstractEventLoop | None = None  # set by bind()
        self.online = True  # False while the bus cannot reach the signal
        self.offline_since: float | None = None  # wall-clock time it went offline
        self.offline_reason: str | None = None  # one line for humans: "no reply from unit 1"
        self._health_listeners: Listeners[[Point]] = Listeners(f"{name} health")  # told when online flips

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach the point to the loop that will receive its observations."""
        self._loop = loop

    @property
    def value(self) -> Any:
        """The last observed value, or None before the first observation."""
        return None if self.last is None else self.last.value

    def listen(self, listener: Listener) -> Callable[[], None]:
        """Call *listener* for every future observation; returns its unsubscribe."""
        return self._listeners.add(listener)

    def listen_health(self, listener: Callable[[Point], None]) -> Callable[[], None]:
        """Call *listener* (loop thread) whenever the point goes offline or comes back; returns its
        unsubscribe."""
        return self._health_listeners.add(listener)

    def set_online(self, online: bool, reason: str | None = None, at: float | None = None) -> None:
        """Drivers call this (loop thread) when the bus loses or regains the signal."""
        if online == self.online:
            if not online and reason:
                self.offline_reason = reason
            return
        self.online = online
        self.offline_since = None if online else (time.time() if at is None else at)
        self.offline_reason = None if online else reason
        self._health_listeners.emit(self)

    def observe(self, value: Any, at: float | None = None, mono: float | None = None) -> Observation:
        """Record an observation (loop thread only) and tell the listeners."""
        obs = Observation(
            self.name,
            value,
            time.time() if at is None else at,
            time.monotonic() if mono is None else mono,
        )
        self.last = obs
        self._listeners.emit(obs)
        return obs

    def observe_threadsafe(self, value: Any) -> None:
        """Record an observation from any thread, stamped at the call."""
        at, mono = time.time(), time.monotonic()
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self.observe, value, at, mono)

    async def refresh(self) -> Observation:
        """Read the signal from the hardware now and record it."""
        return self.observe(await self._read())

    def expect(self, predicate: Callable[[Any], bool]) -> Expectation:
        """Start watching for a value that satisfies *predicate*.

        The expectation is armed at once, so an observation arriving between
        this call and the ``await`` is not missed.
        """
        return Expectation(self, predicate)

    async def _read(self) -> Any:  # pragma: no cover - abstract
        """Read the signal from the bus now (drivers implement it)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the underlying hardware (idempotent)."""
        self._listeners.clear()
        self._health_listeners.clear()


class Expectation:
    """A pending wait for an observation that satisfies a predicate."""

    def __init__(self, point: Point, predicate: Callable[[Any], bool]) -> None:
        self.point = point  # what is watched
        self._predicate = predicate  # what counts as proof
        self._future: asyncio.Future[Observation] = asyncio.get_running_loop().create_future()
        self._undo: Callable[[], None] | None = point.listen(self._on_observation)

    def _on_observation(self, obs: Observation) -> None:
        if not self._future.done() and self._predicate(obs.value):
            self._future.set_result(obs)

    def satisfied_now(self) -> Observation | None:
        """The point's current observation if it already satisfies the predicate."""
        last = self.point.last
        if last is not None and self._predicate(last.value):
            return last
        return None

    async def wait(self, timeout: float) -> Observation:
        """The proving observation; raises TimeoutError past *timeout* seconds.

        The deadline is judged on what was observed when the loop looked: a loop that stalled runs
        the expired deadline and the observations handed to it meanwhile in no useful order, so on
        timeout the observations already delivered are let in first, and a point that shows the
        target then proves it (a late look is no failure of the hardware).
        """
        try:
            now = self.satisfied_now()
            if now is not None:
                return now
            try:
                async with asyncio.timeout(timeout):
                    return await self._future
            except TimeoutError:
                await asyncio.sleep(0)  # observations already queued on the loop run before we judge
                if self._future.done() and not self._future.cancelled():
                    return self._future.result()
                late = self.satisfied_now()
                if late is None:
                    raise
                return late
        finally:
            self.cancel()

    def cancel(self) -> None:
        """Stop watching (idempotent)."""
        if self._undo is not None:
            self._undo()
            self._undo = None
        if not self._future.done():
            self._future.cancel()


class InputPoint(Point):
    """A point that is only observed."""


class OutputPoint(Point):
    """A point that is written, and whose written value can be read back.

    ``readback_source`` names the evidence a read-back gives ("output-readback"
    for a pin read back from itself); drivers may add details about what was
    read in :meth:`readback_evidence`.
    """

    readback_source = "output-readback"

    def readback_evidence(self) -> dict[str, Any]:
        """Details of the last read-back (address, raw value) to show as evidence."""
        return {}

    async def write(self, value: Any) -> Observation:
        """Command *value*; returns the read-back observation after the write."""
        await self._write(value)
        return await self.read_back()

    async def read_back(self) -> Observation:
        """Read the output's actual level from the hardware and observe it."""
        return await self.refresh()

    async def _write(self, value: Any) -> None:  # pragma: no cover - abstract
        """Command the value on the bus."""
        raise NotImplementedError


@dataclass(frozen=True)
class Coupling:
    """Physics a device kind promises: an input that follows an output.

    A door's contact reports open some time after its relay is energised; a
    lamp's feedback follows its output. Kinds declare these so the simulated
    plant can wire the far side of the buses the same way (nothing in a driver
    uses them). ``output`` and ``input`` name fields of the device's config.
    """

    output: str  # the config field holding the output's spec ("relay")
    input: str  # the config field holding the input's spec ("contact")
    active_when_on: bool  # the input's logical value while the output is on
    delay_s: float  # how long the world takes to follow
    fault: str  # the simulated fault that stops it following ("jammed")


@dataclass(frozen=True)
class Quantity:
    """What one value of a sensor measures: its unit, and its meaning for Home Assistant.

    Drivers carry these from the config to the sensor untouched; the kinds judge them.
    """

    unit: str = ""  # "°C", "kWh", or "" when none is given
    device_class: str | None = None  # Home Assistant's sensor class ("energy"), or None
    state_class: str | None = None  # "measurement", "total", "total_increasing", or None


# listener(values, at): one complete, valid reading (value name -> number) seen at wall-clock *at*.
ReadingListener = Callable[[dict[str, float], float], None]


class ReadingSource(Protocol):
    """Where a sensor's readings come from (a serial port, a Modbus meter, a 1-Wire thermometer).

    Each value is an :class:`InputPoint` (online while it is current); a complete, valid reading
    is announced once to every listener. NaN and infinities never reach either.
    """

    @property
    def values(self) -> dict[str, InputPoint]:
        """Value name -> its point, in the config's order."""

    def listen_readings(self, listener: ReadingListener) -> Callable[[], None]:
        """Call *listener* (loop thread) for every reading; returns the undo."""


@dataclass(frozen=True)
class Mechanism:
    """Physics a single :class:`Coupling` cannot express: a machine at the far side that several
    of a device's points belong to (an electric strike with its monitor and its door, a garage
    opener with its button and limit switches, a motor with an up and a down relay).

    Kinds declare it among their couplings; the simulated plant builds the machine named by
    ``model`` (``drivers/sim`` registers the models, each with its own faults). Nothing in a
    driver uses it.
    """

    model: str  # the simulated machine: "strike", "opener", "motor"
    points: tuple[tuple[str, str], ...]  # (the model's role, the config field holding it); unwired roles left out
    settings: tuple[tuple[str, float | bool], ...] = ()  # durations in seconds (the plant scales them), switches

    @classmethod
    def wired(cls, model: str, roles: Iterable[tuple[str, str]], specs: Mapping[str, object],
              **settings: float | bool) -> Mechanism:
        """*model* on the (role, field) pairs of *roles* whose field is among *specs* (the device's
        configured points)."""
        return cls(model, tuple((role, key) for role, key in roles if key in specs), tuple(settings.items()))


class PointSpec(Protocol):
    """What every point spec (GPIO line, Modbus address, serial sensor) tells the daemon."""

    @property
    def bus_kind(self) -> str:
        """Which driver reads it: "gpio", "modbus", "serial"."""

    @property
    def bus_key(self) -> str:
        """Which bus instance carries it (:attr:`Bus.key`)."""


class SpecTable(Protocol):
    """The part of a config table a driver reads its point specs from.

    The controller's TOML reader provides it (with ``FILE:LINE`` in every
    problem); drivers only see this surface, so they import nothing of the
    controller. Each reader returns the value, or the default (None when there
    is none) after recording a problem.
    """

    path: tuple[str | int, ...]  # where the table is, for messages
    data: dict[str, Any]  # the raw parsed table (to iterate free-form keys such as units)

    def has(self, key: str) -> bool: ...
    def take(self, key: str) -> None: ...
    def problem(self, key: str | None, message: str) -> None: ...
    def string(self, key: str, default: Any = ..., choices: Iterable[str] | None = None) -> Any: ...
    def integer(self, key: str, default: Any = ..., low: int | None = None, high: int | None = None) -> Any: ...
    def number(self, key: str, default: Any = ..., low: float = 0.0, high: float = ...,
               low_inclusive: bool = False) -> Any: ...
    def table(self, key: str, required: bool = False) -> SpecTable | None: ...
    def finish(self) -> None: ...


class Bus(Protocol):
    """What the daemon needs of every bus (a GPIO chip, a Modbus link, a serial port).

    A bus *must* provide all of these. Points are attached when a device is
    built on the bus and detached when that device closes them; a bus that
    polls re-plans its polling on both. :meth:`wedged` is how the service
    watchdog learns that the bus's own machinery (a reader thread, a poll loop)
    has stopped making progress: the daemon then stops pinging systemd, which
    restarts it.
    """

    name: str  # for logs and the metrics label: "gpio", the Modbus link's name, the sensor's name
    kind: str  # "gpio", "modbus", "serial"
    key: str  # unique among the daemon's buses; point specs name their bus by it ("gpio", "modbus:fieldbus")
    owner: str | None  # the device a bus was made for (a serial sensor's port), stopped with it; None: shared

    async def start(self) -> None:
        """Connect, put outputs at their safe values, read every point once; then keep observing.

        Called again on a running bus (after a reload built devices on it): bring up the points
        attached since, and nothing else."""

    async def stop(self) -> None:
        """Outputs to their safe values (best effort), then release the hardware. Idempotent."""

    def attach(self, point: Point) -> None:
        """Take *point* into the bus's care (polling plan, safe state at stop)."""

    def detach(self, point: Point) -> None:
        """Forget *point* (its device was closed); the polling plan follows."""

    def wedged(self) -> str | None:
        """Why the bus's own machinery is stuck (needs a restart), or None."""

    def counters(self) -> dict[str, int]:
        """Event counts for metrics (requests, timeouts, reconnects, ...)."""
