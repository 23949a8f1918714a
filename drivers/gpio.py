"""GPIO driver on gpiozero: relay outputs and digital inputs as points.

Every call into gpiozero here is a fast register or ioctl operation, so writes
run on the event loop thread. Edge callbacks arrive on whatever thread moved
the pin (lgpio's callback thread on a Pi, a timer in a simulation) and are
handed to the loop with ``call_soon_threadsafe``; nothing polls.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from gpiozero import Device, DigitalInputDevice, DigitalOutputDevice
from gpiozero.exc import BadPinFactory, GPIOZeroError, NativePinFactoryFallback, PinFactoryFallback

from drivers.base import InputPoint, OutputPoint, Point, SpecTable

log = logging.getLogger(__name__)

GPIO_PINS = range(0, 28)  # BCM numbers on the 40-pin header


# -- specs: what the config says about a GPIO point --------------------------------------------
@dataclass(frozen=True)
class GpioOutputSpec:
    """A relay or other digital output on a BCM-numbered GPIO line."""

    pin: int  # BCM number
    active_high: bool  # electrical level that energises the load
    bus_kind = "gpio"  # the driver that reads it
    bus_key = "gpio"  # the bus that carries it (one per board)


@dataclass(frozen=True)
class GpioInputSpec:
    """A digital input on a BCM-numbered GPIO line."""

    pin: int  # BCM number
    pull: str  # "up", "down" or "none" (external resistor)
    active_high: bool | None  # with pull "none": which level is active; else implied by the pull
    debounce_s: float | None  # ignore edges closer than this (real pins only)
    bus_kind = "gpio"
    bus_key = "gpio"

    @property
    def active_level(self) -> bool:
        """The electrical level that reads as active."""
        if self.pull == "up":
            return False
        if self.pull == "down":
            return True
        return bool(self.active_high)


class PinClaims:
    """Catches a GPIO line claimed by two points of one config."""

    def __init__(self) -> None:
        self.owner: dict[int, str] = {}  # pin -> field that claimed it first

    def claim(self, table: SpecTable, key: str, pin: int) -> None:
        where = ".".join(str(p) for p in (*table.path, key))
        first = self.owner.setdefault(pin, where)
        if first != where:
            table.problem(key, f"GPIO {pin} is already used by {first}")


def read_output(t: SpecTable, claims: PinClaims) -> GpioOutputSpec | None:
    """``{ gpio = PIN, active = "high" | "low" }``."""
    pin = t.integer("gpio", low=GPIO_PINS.start, high=GPIO_PINS.stop - 1)
    active = t.string("active", default="high", choices=("high", "low"))
    t.finish()
    if pin is None:
        return None
    claims.claim(t, "gpio", pin)
    return GpioOutputSpec(pin=pin, active_high=active == "high")


def read_input(t: SpecTable, claims: PinClaims) -> GpioInputSpec | None:
    """``{ gpio = PIN, pull = "up" | "down" | "none", active = ..., debounce_ms = ... }``."""
    pin = t.integer("gpio", low=GPIO_PINS.start, high=GPIO_PINS.stop - 1)
    pull = t.string("pull", default="up", choices=("up", "down", "none"))
    active = t.string("active", default=None, choices=("high", "low"))
    debounce_ms = t.number("debounce_ms", default=None, high=1000.0, low_inclusive=True)
    t.finish()
    if pull == "none" and active is None:
        t.problem("active", 'required with pull = "none" (which level means active?)')
    if pull in ("up", "down") and active is not None:
        t.problem("active", f'implied by pull = "{pull}" (active {"low" if pull == "up" else "high"}); remove it')
    if pin is None:
        return None
    claims.claim(t, "gpio", pin)
    return GpioInputSpec(
        pin=pin,
        pull=pull or "up",
        active_high=None if active is None else active == "high",
        debounce_s=None if not debounce_ms else debounce_ms / 1000.0,
    )


class GpioUnavailable(RuntimeError):
    """No GPIO pin factory could be loaded (not a Pi, or its library is missing); one line saying why."""


ADVICE = ("On a Raspberry Pi, install lgpio (sudo apt install python3-lgpio, or pip install lgpio in pictl's venv) "
          "and check the pins with `pinout` or `gpiodetect`; without the hardware, run with --simulate.")
_factories: dict[str, Any] = {}  # named factories made so far: one per process, as gpiozero keeps its default


def no_gpio_here() -> str | None:
    """Why this machine plainly has no GPIO, or None when it may have some."""
    if any(Path("/dev").glob("gpiochip*")) or Path("/proc/device-tree").exists():
        return None
    return "this machine has no GPIO: no /dev/gpiochip*, no /proc/device-tree"


def load_pin_factory(name: str = "auto") -> Any:
    """Return the gpiozero pin factory, chosen as gpiozero documents, or raise :class:`GpioUnavailable`.

    *name* is the ``[gpio] factory`` setting: one of gpiozero's registered factories (``lgpio``,
    ``rpigpio``, ``pigpio``, ``native``, ``mock``), or ``auto``: then ``GPIOZERO_PIN_FACTORY`` when
    set, else gpiozero's own order (lgpio first: the only one that works on a Pi 5, then rpigpio,
    pigpio, native). Calling it again returns the same factory.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if name == "auto":
                Device.ensure_pin_factory()
                factory = Device.pin_factory
            elif name in _factories:
                factory = _factories[name]
            else:
                named = [ep for ep in entry_points(group="gpiozero_pin_factories") if ep.name == name]
                if not named:
                    raise GpioUnavailable(f"unknown gpiozero pin factory {name!r} (the [gpio] factory setting)")
                factory = _factories[name] = named[0].load()()
        except GpioUnavailable:
            raise
        except (BadPinFactory, ImportError, OSError, RuntimeError, GPIOZeroError) as exc:
            # gpiozero says why each factory in its order failed as a warning; the first is lgpio's.
            tried = [str(w.message).removeprefix("Falling back from ") for w in caught
                     if issubclass(w.category, PinFactoryFallback)]
            chosen = name if name != "auto" else f"GPIOZERO_PIN_FACTORY={os.environ.get('GPIOZERO_PIN_FACTORY')}"
            detail = tried[0] if tried else f"{chosen}: {exc}"
            why = no_gpio_here() or "no gpiozero pin factory could open it"
            raise GpioUnavailable(f"{why} ({detail}). {ADVICE}") from exc
    if any(issubclass(w.category, NativePinFactoryFallback) for w in caught):
        log.warning("GPIO through gpiozero's experimental native factory (%s): install lgpio",
                    "; ".join(str(w.message) for w in caught if issubclass(w.category, PinFactoryFallback)))
    return factory


def gpio_refusal(devices: Iterable[Any], name: str = "auto") -> str | None:
    """Why *devices* (configs: ``.name``, ``.specs()``) cannot have their GPIO lines, in one line, or
    None when the pin factory *name* loads (or none uses GPIO). Run before anything starts, so that a
    machine without GPIO gets this line at once instead of a start and a stop."""
    users = [d.name for d in devices if any(spec.bus_kind == "gpio" for spec in d.specs().values())]
    if not users:
        return None
    try:
        load_pin_factory(name)
    except GpioUnavailable as exc:
        names = " and ".join([", ".join(users[:-1]), users[-1]] if len(users) > 1 else users)
        return f"{names} use{'s' if len(users) == 1 else ''} GPIO, but {exc}"
    return None


class GpioOutput(OutputPoint):
    """A digital output (a relay driver input), read back from the pin itself."""

    def __init__(self, name: str, pin: int, *, active_high: bool, safe: bool, factory: Any,
                 keep: bool = False) -> None:
        super().__init__(name)
        self.pin = pin  # BCM number
        self.safe = safe  # logical level written first (unless keep), on failure and at shutdown
        # initial_value makes gpiozero drive the safe level as the line becomes an output;
        # None leaves the line at the level it is found at.
        self._device = DigitalOutputDevice(
            pin, active_high=active_high, initial_value=None if keep else safe, pin_factory=factory
        )
        self._closed = False
        self.bus: GpioBus | None = None  # set when attached

    @property
    def closed(self) -> bool:
        return self._closed

    async def _write(self, value: Any) -> None:
        self.write_now(bool(value))

    def write_now(self, value: bool) -> None:
        """Set the output synchronously (used for shutdown and recovery)."""
        if value:
            self._device.on()
        else:
            self._device.off()

    async def _read(self) -> bool:
        return self.read_now()

    def read_now(self) -> bool:
        """The level the pin is actually at, as a logical value."""
        return bool(self._device.value)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            # With lgpio a closed output floats (gpiozero #1146): drive safe first.
            self.write_now(self.safe)
        finally:
            self._device.close()
            super().close()
            if self.bus is not None:
                self.bus.detach(self)


class GpioInput(InputPoint):
    """A digital input whose value is True while the line is in its active state."""

    def __init__(
        self,
        name: str,
        pin: int,
        *,
        pull: str,
        active_high: bool | None,
        debounce_s: float | None,
        factory: Any,
    ) -> None:
        super().__init__(name)
        self.pin = pin  # BCM number
        pull_up = {"up": True, "down": False, "none": None}[pull]
        self._device = DigitalInputDevice(
            pin,
            pull_up=pull_up,
            active_state=active_high if pull_up is None else None,
            bounce_time=debounce_s,
            pin_factory=factory,
        )
        self._device.when_activated = self._on_activated
        self._device.when_deactivated = self._on_deactivated
        self._closed = False
        self.bus: GpioBus | None = None  # set when attached

    @property
    def closed(self) -> bool:
        return self._closed

    def _on_activated(self) -> None:
        self.observe_threadsafe(True)

    def _on_deactivated(self) -> None:
        self.observe_threadsafe(False)

    async def _read(self) -> bool:
        return bool(self._device.value)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._device.when_activated = None
        self._device.when_deactivated = None
        self._device.close()
        super().close()
        if self.bus is not None:
            self.bus.detach(self)


class GpioBus:
    """The board's GPIO lines, through one pin factory (a :class:`drivers.base.Bus`)."""

    name = "gpio"  # one per board
    kind = "gpio"
    key = "gpio"  # what point specs name it by (their bus_key)
    owner: str | None = None  # shared by every device

    def __init__(self, factory: Any = None, *, factory_name: str = "auto") -> None:
        self._factory = factory  # a gpiozero Factory (MockFactory in the plant), or None: loaded when needed
        self.factory_name = factory_name  # the [gpio] factory setting, for load_pin_factory()
        self.points: list[GpioOutput | GpioInput] = []  # every open line, for stop()

    @property
    def factory(self) -> Any:
        """The pin factory, loaded with the first line claimed: a config without GPIO devices
        (Modbus and serial only) runs on a machine without GPIO."""
        if self._factory is None:
            self._factory = load_pin_factory(self.factory_name)
        return self._factory

    def output(self, name: str, spec: GpioOutputSpec, *, safe: bool, keep: bool = False) -> GpioOutput:
        """An output driven to *safe* as it is claimed, or left as found when *keep*."""
        point = GpioOutput(name, spec.pin, active_high=spec.active_high, safe=bool(safe), factory=self.factory,
                           keep=keep)
        self.attach(point)
        return point

    def input(self, name: str, spec: GpioInputSpec) -> GpioInput:
        point = GpioInput(name, spec.pin, pull=spec.pull, active_high=spec.active_high,
                          debounce_s=spec.debounce_s, factory=self.factory)
        self.attach(point)
        return point

    def attach(self, point: Point) -> None:
        if not isinstance(point, (GpioOutput, GpioInput)):
            raise TypeError(f"{point.name} is not a GPIO point")
        point.bus = self
        self.points.append(point)

    def detach(self, point: Point) -> None:
        if point in self.points:
            self.points.remove(point)

    async def start(self) -> None:
        """Nothing to connect: lines are claimed (at their safe level) as points are made."""

    def counters(self) -> dict[str, int]:
        """Event counts for metrics (GPIO has none worth counting)."""
        return {}

    def wedged(self) -> str | None:
        """GPIO calls are quick ioctls on the loop thread, and edges arrive on the
        factory's own thread: nothing of the bus's can hang without the loop
        hanging too, which the watchdog catches by itself."""
        return None

    async def stop(self) -> None:
        self.close()

    def close(self) -> None:
        """Outputs to their safe level, then release every line."""
        for point in reversed(list(self.points)):
            try:
                point.close()
            except Exception:  # one stuck line must not keep the others energised
                log.exception("closing GPIO point %s failed", point.name)
        self.points.clear()
