"""GPIO driver on gpiozero: relay outputs and digital inputs as points.

Every call into gpiozero here is a fast register or ioctl operation, so writes
run on the event loop thread. Edge callbacks arrive on whatever thread moved
the pin (lgpio's callback thread on a Pi, a timer in a simulation) and are
handed to the loop with ``call_soon_threadsafe``; nothing polls.
"""

from __future__ import annotations

import logging
import warnings
from importlib.metadata import entry_points
from typing import Any

from gpiozero import Device, DigitalInputDevice, DigitalOutputDevice
from gpiozero.exc import BadPinFactory, GPIOZeroError

from drivers.base import InputPoint, OutputPoint

log = logging.getLogger(__name__)


class GpioUnavailable(RuntimeError):
    """No GPIO pin factory could be loaded (not a Pi, or its library is missing)."""


def load_pin_factory(name: str = "auto") -> Any:
    """Return a gpiozero pin factory, or raise :class:`GpioUnavailable`.

    *name* is ``auto`` (gpiozero's own order: lgpio, rpigpio, pigpio, native)
    or one of gpiozero's registered factory names.
    """
    try:
        if name == "auto":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # gpiozero warns on every fallback
                Device.ensure_pin_factory()  # honours GPIOZERO_PIN_FACTORY
                return Device.pin_factory
        for ep in entry_points(group="gpiozero_pin_factories"):
            if ep.name == name:
                return ep.load()()
        raise GpioUnavailable(f"unknown gpiozero pin factory {name!r}")
    except GpioUnavailable:
        raise
    except (BadPinFactory, ImportError, OSError, RuntimeError, GPIOZeroError) as exc:
        raise GpioUnavailable(
            f"no GPIO pin factory available ({exc}); on a Raspberry Pi install lgpio "
            "(apt install python3-lgpio, or pip install lgpio in the venv); "
            "elsewhere run with --simulate"
        ) from exc


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


class GpioBus:
    """The board's GPIO lines, through one pin factory."""

    name = "gpio"  # one per board
    kind = "gpio"

    def __init__(self, factory: Any) -> None:
        self.factory = factory  # a gpiozero Factory (real, or MockFactory in the plant)
        self.points: list[GpioOutput | GpioInput] = []  # everything opened, for close()

    def output(self, name: str, pin: int, *, active_high: bool, safe: bool, keep: bool = False) -> GpioOutput:
        self._forget_closed()
        point = GpioOutput(name, pin, active_high=active_high, safe=safe, factory=self.factory, keep=keep)
        self.points.append(point)
        return point

    def input(
        self, name: str, pin: int, *, pull: str, active_high: bool | None, debounce_s: float | None
    ) -> GpioInput:
        self._forget_closed()
        point = GpioInput(
            name, pin, pull=pull, active_high=active_high, debounce_s=debounce_s, factory=self.factory
        )
        self.points.append(point)
        return point

    def _forget_closed(self) -> None:
        # Devices closed by a config reload closed their points; do not keep them for ever.
        self.points = [p for p in self.points if not p.closed]

    def counters(self) -> dict[str, int]:
        """Event counts for metrics (GPIO has none worth counting)."""
        return {}

    def wedged(self) -> str | None:
        """Why the bus cannot work any more (its own thread stuck), or None.

        The watchdog withholds its ping while a bus says so, and systemd
        restarts the daemon. GPIO calls are quick ioctls on the loop thread:
        nothing of its own can hang.
        """
        return None

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        """Outputs to their safe level, then release every line."""
        for point in reversed(self.points):
            try:
                point.close()
            except Exception:  # one stuck line must not keep the others energised
                log.exception("closing GPIO point %s failed", point.name)
        self.points.clear()
