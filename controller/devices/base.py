"""Devices: doors, switches and sensors built from points.

A device kind subclasses :class:`Device`. It *must* define ``kind``,
``actions`` and :meth:`Device.state`, and implement :meth:`Device._perform`
(command the points, then await the observation that proves the change). The
base class owns what every kind shares: the per-device FIFO queue, the
``timeout`` parameter, the online check, timing, and state-change
notification. See :mod:`controller.devices.registry` for the registry.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from controller.devices.outward import UNKNOWN, BadCommand, HaEntity, MqttMessage
from controller.settings.devices import DeviceConfig
from controller.wire.clock import iso
from controller.wire.errors import (
    DISCONNECTED,
    Busy,
    Dropped,
    InvalidParams,
    NotConfirmed,
    Unavailable,
    refuse_unknown_params,
)
from drivers.base import Listeners, Observation, OutputPoint, Point, PointError, PointUnavailable

log = logging.getLogger(__name__)

# listener(device, what, data): what is "state" (data: the state plus "cause"),
# "reading" (a sensor reading), "status" (online flipped) or "discrepancy".
DeviceListener = Callable[["Device", str, dict[str, Any]], None]
MAX_TIMEOUT_PARAM = 3600.0  # anything longer is a client bug, not a wish


@dataclass(frozen=True)
class Param:
    """One parameter of an action, as ``system.describe`` shows it."""

    type: str  # JSON type: "number", "string", "boolean"
    description: str
    required: bool = False


@dataclass(frozen=True)
class Action:
    """An action a device offers."""

    description: str
    params: dict[str, Param] = field(default_factory=dict)
    # "" (most actions): waits its turn in the device's queue. Otherwise the action never waits: it
    # interrupts the one in progress (cancelled where it awaits, so its own cleanup runs) and every call
    # queued before it, which fail -32002 with recovery "<interrupts> by <device>.<action>"
    # ("stopped", "superseded").
    interrupts: str = ""


TIMEOUT_PARAM = Param("number", "seconds to wait for confirmation (capped by the device's max_timeout)")
REQUEST_KEY_PARAM = Param("string", "makes the call at-most-once: a retry with the same key returns the first "
                          "outcome instead of acting again")


@dataclass
class Outcome:
    """What a kind's ``_perform`` returns on success."""

    state: Any  # the device state proved by the evidence ("on", or a setpoint's value)
    changed: bool  # False when it was already there
    evidence: dict[str, Any]  # where the proof came from


def evidence_of(obs: Observation | None, shown: Any, source: str | None = None) -> dict[str, Any]:
    """The evidence object of a confirmed result (README "A confirmed action") for one observation
    (None: nothing was observed yet, which only a point that was never read can say)."""
    if obs is None:
        return {"source": source or "unknown", "value": shown, "at": None}
    out: dict[str, Any] = {"source": source or obs.point, "value": shown, "at": iso(obs.at)}
    if source is not None:
        out["point"] = obs.point
    return out


class Device:
    """A named thing with actions that are confirmed by observation."""

    kind: ClassVar[str] = ""
    actions: ClassVar[dict[str, Action]] = {}

    def __init__(self, config: DeviceConfig, points: Sequence[Point]) -> None:
        self.config = config
        self.name = config.name
        self.points: list[Point] = list(points)  # everything this device reads or writes
        self._queue = asyncio.Lock()  # FIFO: asyncio.Lock wakes waiters in arrival order
        self._listeners: Listeners[[Device, str, dict[str, Any]]] = Listeners(f"{config.name} events")
        self._was_online = all(p.online for p in points)  # a sensor starts offline until its first reading
        self._busy_action: str | None = None  # the action holding the queue, if any
        self._busy_cause = "rpc"  # the cause published for changes while it holds the queue
        self._holder: asyncio.Task[Any] | None = None  # the task performing that action
        self._holder_interrupted: tuple[str, str] | None = None  # (by, word) once an interrupt cancelled it
        self._epoch = 0  # +1 per interrupting call: a call queued in an older epoch was interrupted
        self._last_interrupt = ("", "")  # (method, word) of the newest interrupting call
        self._last_state: dict[str, Any] | None = None
        self.changed_at = time.time()  # when the state last changed
        self.retired = False  # closed by a config reload: calls still queued fail as unavailable
        self._unlisten = [undo for point in points  # taken back when the device closes
                          for undo in (point.listen(self._on_observation), point.listen_health(self._on_point_health))]

    # -- state -------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:  # pragma: no cover - abstract
        """The device's current state object; never touches hardware."""
        raise NotImplementedError

    @property
    def online(self) -> bool:
        return all(p.online for p in self.points)

    def offline_since(self) -> float | None:
        times = [p.offline_since for p in self.points if not p.online and p.offline_since is not None]
        return min(times) if times else None

    @property
    def last_update(self) -> float | None:
        """Wall-clock time of the newest observation on any point."""
        times = [p.last.at for p in self.points if p.last is not None]
        return max(times) if times else None

    def listen(self, listener: DeviceListener) -> Callable[[], None]:
        """Call *listener* (loop thread) for state changes, readings, status flips, discrepancies and
        a kind's own events (an alarm, a press); returns its unsubscribe."""
        return self._listeners.add(listener)

    def _emit(self, what: str, data: dict[str, Any]) -> None:
        """Tell the listeners; the runtime publishes it as the event ``<device>.<what>``."""
        self._listeners.emit(self, what, data)

    def publish_reading(self, data: dict[str, Any]) -> None:
        """Kinds that produce readings (sensors) call this for every valid one."""
        self._emit("reading", data)

    def discrepancy(self) -> dict[str, Any] | None:
        """What contradicts the commanded output right now, if anything (kinds with feedback)."""
        return None

    def status(self) -> dict[str, Any]:
        """Online flag, and since when and why it is offline."""
        if self.online:
            return {"online": True}
        since = self.offline_since()
        reason = next((p.offline_reason for p in self.points if not p.online), None)
        return {"online": False, "since": None if since is None else iso(since), "reason": reason}

    def _on_point_health(self, point: Point) -> None:
        online = self.online
        if online == self._was_online:
            return
        self._was_online = online
        if online:
            log.info("%s is back online", self.name)
        else:
            log.warning("%s is offline: %s", self.name, point.offline_reason or "no reason given")
        self._emit("status", self.status())

    def _on_observation(self, obs: Observation) -> None:
        self._publish_if_changed()

    def _publish_if_changed(self) -> None:
        state = self.state()
        comparable = {k: v for k, v in state.items() if k != "since"}
        if comparable == self._last_state:
            return
        first = self._last_state is None
        self._last_state = comparable
        self.changed_at = time.time()
        if first:
            return
        cause = self._busy_cause if self._busy_action is not None else "external"
        self._emit("state", {**self.state(), "cause": cause})  # "since" is now the change time
        if cause == "external":
            found = self.discrepancy()
            if found is not None:
                log.warning("%s: discrepancy: %s", self.name, found)
                self._emit("discrepancy", found)

    # -- actions -----------------------------------------------------------------------
    def check_params(self, action: str, params: dict[str, Any]) -> float:
        """Validate params for *action*; returns the effective timeout. Raises InvalidParams."""
        spec = self.actions[action]
        refuse_unknown_params(f"{self.name}.{action}", params, ("timeout", "request_key", *spec.params))
        for name, param in spec.params.items():
            if param.required and name not in params:
                raise InvalidParams(f"missing parameter {name!r}", param=name)
        timeout = params.get("timeout", self.config.timeout)
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not math.isfinite(timeout)
            or not 0 < timeout <= MAX_TIMEOUT_PARAM
        ):
            raise InvalidParams(
                f"timeout must be a number of seconds > 0 (capped at {self.config.max_timeout:g})",
                param="timeout",
            )
        self.check_action_params(action, params)
        return min(float(timeout), self.config.max_timeout)

    def check_action_params(self, action: str, params: dict[str, Any]) -> None:
        """Kinds with parameters beyond ``timeout`` validate them here."""

    def check_online(self) -> None:
        if self.retired:
            raise Unavailable(f"{self.name} was closed by a config reload", device=self.name, since=None)
        if not self.online:
            raise self.unavailable()

    async def run(self, action: str, params: dict[str, Any], timeout: float,
                  wanted: Callable[[], bool] | None = None) -> dict[str, Any]:
        """Queue behind earlier actions (bounded by *timeout*), then perform and confirm.

        An action whose spec ``interrupts`` does not wait: it cancels the one in progress and every
        call queued before it (see :attr:`Action.interrupts`). *wanted* is asked once the queue is
        ours, before anything is commanded: False (the caller has gone) drops the action unstarted
        (:class:`Dropped`); once started, an action finishes. Raises Busy, Unavailable, NotConfirmed
        or Dropped; the result is the confirmed result README's *Methods* describes.
        """
        word = self.actions[action].interrupts
        if word:
            self._interrupt(f"{self.name}.{action}", word)
        epoch = self._epoch
        await self._acquire(timeout)
        task = asyncio.current_task()
        started = time.monotonic()
        try:
            if wanted is not None and not wanted():
                raise Dropped(DISCONNECTED)
            if epoch != self._epoch:  # interrupted while it waited: it never began
                raise self.interrupted(action, *self._last_interrupt, started)
            self.check_online()  # it may have gone offline while we queued
            self._busy_action = action
            self._busy_cause = "rpc"
            self._holder = task
            try:
                outcome = await self._perform(action, params, timeout, started)
            except BaseException as exc:
                by = self._holder_interrupted
                if by is None or task is None:
                    raise
                self._holder = self._holder_interrupted = None
                if task.uncancel() > 0 or not isinstance(exc, asyncio.CancelledError):
                    raise  # cancelled from elsewhere too (shutdown), or the kind said more itself
                raise self.interrupted(action, *by, started) from None
            if self._holder_interrupted is not None and task is not None:
                task.uncancel()  # the kind finished despite the interrupt (it caught the cancel itself)
            elapsed_ms = round((time.monotonic() - started) * 1000.0, 1)
            return {
                "device": self.name,
                "action": action,
                "state": outcome.state,
                "changed": outcome.changed,
                "confirmed": True,
                "elapsed_ms": elapsed_ms,
                "evidence": outcome.evidence,
            }
        finally:
            self._holder = self._holder_interrupted = None
            self._busy_action = None
            self._queue.release()
            self._publish_if_changed()

    async def _acquire(self, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self._queue.acquire()
        except TimeoutError:
            raise Busy(f"{self.name} is busy with earlier actions", device=self.name) from None

    def _interrupt(self, by: str, word: str) -> None:
        """Cancel the action in progress (its cleanup runs where it awaits) and mark every call
        queued until now as interrupted by *by*."""
        self._epoch += 1
        self._last_interrupt = (by, word)
        holder = self._holder
        if holder is not None and self._holder_interrupted is None:
            self._holder_interrupted = (by, word)
            holder.cancel()

    def interrupted(self, action: str, by: str, word: str, started: float) -> NotConfirmed:
        """-32002 for a call that an interrupting one (*by*) stopped or superseded; kinds may say
        more (what was expected, what their cleanup did)."""
        return self.not_confirmed(action, self.state().get("state"), started, f"{word} by {by}",
                                  why=f"({word} by {by})")

    async def run_own(self, work: Callable[[], Awaitable[None]], cause: str, timeout: float) -> None:
        """Work a kind starts by itself (an automatic relock) in the device's queue like an action,
        so it never overlaps one; the changes it makes are published with *cause*. Raises Busy."""
        await self._acquire(timeout)
        try:
            self._busy_action = "(own)"
            self._busy_cause = cause
            await work()
        finally:
            self._publish_if_changed()
            self._busy_action = None
            self._busy_cause = "rpc"
            self._queue.release()

    async def _perform(self, action: str, params: dict[str, Any], timeout: float,
                       started: float) -> Outcome:  # pragma: no cover - abstract
        raise NotImplementedError

    def not_confirmed(self, expected: Any, observed: Any, started: float, recovery: str,
                      evidence: dict[str, Any] | None = None, why: str = "within the deadline") -> NotConfirmed:
        """-32002; *evidence* says what was actually read (a read-back, an exception reply); *why*
        ends the message when it was not the deadline ("stopped by garage.stop")."""
        elapsed_ms = round((time.monotonic() - started) * 1000.0, 1)
        extra = {} if evidence is None else {"evidence": evidence}
        return NotConfirmed(
            f"{self.name} did not become {expected} {why}",
            device=self.name, expected=expected, observed=observed, elapsed_ms=elapsed_ms, recovery=recovery,
            **extra,
        )

    async def write_read_back(self, output: OutputPoint, value: Any, expected: Any, timeout: float, started: float,
                              recover: Callable[[], Awaitable[str]]) -> Observation:
        """Write *value* and return its read-back within *timeout*.

        A bus that is down is -32004; an exception reply, no reply or no
        read-back in time is -32002 after *recover* (which returns what it did).
        A read-back of *value* observed since the write began proves it even when the loop was
        late to look (the deadline is judged on what was observed, as :meth:`Expectation.wait` does).
        """
        begun = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                return await output.write(value)
        except PointUnavailable:
            raise self.unavailable() from None
        except PointError as exc:
            raise self.not_confirmed(expected, exc.observed, started, await recover(),
                                     {"source": output.readback_source, **exc.evidence}) from None
        except TimeoutError:
            last = output.last
            if last is not None and last.mono >= begun and last.value == value:
                return last
            raise self.not_confirmed(expected, "no read-back before the deadline", started, await recover()) from None

    def unavailable(self) -> Unavailable:
        """-32004 for a device whose bus went down under an action."""
        since = self.offline_since()
        return Unavailable(f"{self.name} is offline", device=self.name,
                           since=None if since is None else iso(since))

    # -- outward: how front doors show this kind (they never compare kind names) ----------------
    def ha_entities(self) -> list[HaEntity]:
        """The Home Assistant entities announced for this device over MQTT (none by default)."""
        return []

    def mqtt_state(self, state: dict[str, Any]) -> str:
        """The retained ``state`` payload for a state object (``state()`` or an event's data)."""
        return str(state.get("state", UNKNOWN)) if state.get("state") not in (None, "unknown") else UNKNOWN

    def mqtt_messages(self, what: str, data: dict[str, Any]) -> list[MqttMessage]:
        """What the device event ``<device>.<what>`` becomes on the broker (only observations: a
        command's outcome goes to the attributes and event leaves, never to ``state``)."""
        if what in ("state", "reading"):
            return [MqttMessage("state", self.mqtt_state(data), retain=True)]
        return []

    def mqtt_command(self, leaf: str, text: str) -> tuple[str, dict[str, Any]]:
        """The (action, params) a command payload asks for; BadCommand when malformed."""
        raise BadCommand(f"a {self.kind} takes no commands")

    def panel(self) -> dict[str, Any]:
        """What the wall panel draws (README, *The wall panel*): what confirms an action, a button per
        action without required params, a box per required param, and extra lines (none here)."""
        return {
            "proof": "confirmation",
            "buttons": [a for a, spec in self.actions.items() if not any(p.required for p in spec.params.values())],
            "controls": [{"action": a, "param": name, "type": "number" if p.type == "number" else "text",
                          "label": name}
                         for a, spec in self.actions.items() for name, p in spec.params.items() if p.required],
        }

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "actions": {
                name: {
                    "description": a.description,
                    "params": {
                        p: {"type": s.type, "description": s.description, "required": s.required}
                        for p, s in {"timeout": TIMEOUT_PARAM, "request_key": REQUEST_KEY_PARAM,
                                     **a.params}.items()
                    },
                    **({"interrupts": a.interrupts} if a.interrupts else {}),  # never waits for a running action
                }
                for name, a in self.actions.items()
            },
            "timeout": self.config.timeout,
            "max_timeout": self.config.max_timeout,
            "panel": self.panel(),
        }

    async def start(self) -> None:
        """Read the truth from every point before the first call is served."""
        for point in self.points:
            try:
                await point.refresh()
            except PointError as exc:  # a bus that is down at start: the device starts offline
                log.info("%s: %s starts unread: %s", self.name, point.name, exc.observed)
        self._last_state = None
        self._publish_if_changed()

    def close(self) -> None:
        for undo in self._unlisten:
            undo()
        self._unlisten.clear()
        for point in self.points:
            point.close()

    async def retire(self, timeout: float) -> bool:
        """Let the action in progress finish (up to *timeout*), then close: outputs to safe.

        Calls queued behind it fail as unavailable. Returns False when the
        action did not finish in time (the device is closed all the same).
        """
        self.retired = True
        try:
            async with asyncio.timeout(timeout):
                await self._queue.acquire()
        except TimeoutError:
            finished = False
        else:
            finished = True
            self._queue.release()
        self.close()
        return finished
