"""Safe states that come back (README, *Failures are safe*): part of every device.

A kind's recovery (a door's release, a switch going back to its safe level) writes through
:meth:`SafeStates.write_safe`. When the bus cannot carry that write (a Modbus unit that stopped
answering mid-action, a port gone), the write is kept pending instead of forgotten:

- written first when the device is back online (its points' health), holding the device's queue,
  so no new command on it runs before; a command that finds it still unwritten gets ``-32004``;
- meanwhile every kind's state says ``"safe_pending": true`` (added here: kinds never do), and a
  ``<device>.safe`` event says when it was kept pending and when it was written late (the runtime
  counts both in ``pictl_safe_writes_total``; ``pictl_safe_pending`` is 1 meanwhile);
- a driver's known failure (:class:`drivers.base.PointError`: no reply, the port gone) is one log
  line; anything else keeps its traceback.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import TYPE_CHECKING, Any

from controller.wire.owned import OwnedTasks
from drivers.base import Observation, OutputPoint, PointError

log = logging.getLogger(__name__)


class SafeStates:
    """What :class:`controller.devices.base.Device` does about safe writes its bus could not carry."""

    if TYPE_CHECKING:  # the device's own
        name: str
        retired: bool
        _queue: asyncio.Lock

        def _emit(self, what: str, data: dict[str, Any]) -> None: ...

        def _publish_if_changed(self, cause: str | None = None) -> None: ...

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every kind's ``state()`` says ``"safe_pending": true`` while a safe write waits for its bus."""
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("state")
        if own is None or getattr(own, "_says_pending", False):
            return

        @functools.wraps(own)
        def state(self: SafeStates) -> dict[str, Any]:
            shown = own(self)
            return {**shown, "safe_pending": True} if self._safe_pending else shown

        state._says_pending = True  # type: ignore[attr-defined]
        cls.state = state  # type: ignore[attr-defined]

    def _init_safe_states(self) -> None:
        self._safe_pending: dict[str, tuple[OutputPoint, Any]] = {}  # point name -> (point, its safe value)
        self._pending_writes = OwnedTasks(f"{self.name} pending safe writes")

    @property
    def safe_pending(self) -> bool:
        """A safe write waits for its bus (the state says so too)."""
        return bool(self._safe_pending)

    async def write_safe(self, output: OutputPoint, value: Any) -> Observation | str:
        """Write *output*'s safe *value*: the read-back, or what went wrong (the write is then pending)."""
        try:
            obs = await output.write(value)
        except PointError as exc:
            failure = exc.observed
            log.error("%s: writing %s's safe value FAILED (%s); kept pending: written first when it answers again",
                      self.name, output.name, failure)
        except Exception:
            failure = "an unexpected error (logged)"
            log.exception("%s: writing %s's safe value FAILED; kept pending", self.name, output.name)
        else:
            if self._safe_pending.pop(output.name, None) is not None:
                self._emit("safe", {"point": output.name, "outcome": "written_late"})
            return obs
        self._safe_pending[output.name] = (output, value)
        self._emit("safe", {"point": output.name, "outcome": "pending", "observed": failure})
        return failure

    def _back_online(self) -> None:
        if self._safe_pending and not self.retired:
            self._pending_writes.spawn(self._safe_first())

    async def _safe_first(self) -> None:
        """Back online with safe writes pending: write them now, ahead of any command (the queue)."""
        async with self._queue:
            if self._safe_pending and not self.retired:
                await self._write_pending()

    async def _write_pending(self) -> bool:
        """The pending safe writes, in the order they failed (the queue is held); True once none is left."""
        for name, (output, value) in list(self._safe_pending.items()):
            try:
                await output.write(value)
            except PointError as exc:
                log.warning("%s: %s's safe value still not written (%s)", self.name, name, exc.observed)
                return False
            except Exception:
                log.exception("%s: writing %s's pending safe value failed", self.name, name)
                return False
            del self._safe_pending[name]
            log.info("%s: %s's safe value written now that it answers again", self.name, name)
            self._emit("safe", {"point": name, "outcome": "written_late"})
        self._publish_if_changed("auto")  # the state no longer says safe_pending
        return True

    def _stop_safe_states(self) -> None:
        self._pending_writes.cancel()
