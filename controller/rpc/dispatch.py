"""From a decoded request to a result: auth, method lookup, role, params, device.

Checks run in the order README's *Errors* gives: authentication, method exists, role may
call it, params, device online. Nothing reaches a device before all pass.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from controller import __version__
from controller.devices.base import Device
from controller.rpc.events import EventBus
from controller.rpc.metrics import Metrics
from controller.rpc.oncekeys import OnceKeys, check_key
from controller.security.audit import AuditTrail
from controller.security.auth import Authenticator, Session
from controller.wire import jsonrpc
from controller.wire.clock import iso
from controller.wire.errors import (
    InternalError,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    RateLimited,
    RpcError,
    Unauthorized,
    Unavailable,
)
from drivers.sim.plant import Plant, UnknownFault

log = logging.getLogger(__name__)

Handler = Callable[[Session, dict[str, Any]], Any]  # returns the result, or an awaitable of it


class NotNow:
    """answer_now's word that the frame needs the asynchronous path."""


NOT_NOW = NotNow()
OPEN_METHODS = frozenset({"session.auth"})  # callable before authentication
AUTH_PENDING = "auth_pending"  # session.extra key: a session.auth is being answered on this connection


def _is_auth(item: jsonrpc.Request | jsonrpc.Invalid) -> bool:
    return isinstance(item, jsonrpc.Request) and item.method == "session.auth"


def _short(text: str, limit: int = 128) -> str:
    """Client-supplied text echoed in an error, bounded."""
    return text if len(text) <= limit else text[:limit] + "..."


def _no_params(method: str, params: dict[str, Any], allowed: tuple[str, ...] = ()) -> None:
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise InvalidParams(f"unknown parameter(s) for {method}: {', '.join(_short(u, 40) for u in unknown)}",
                            allowed=list(allowed))


class Dispatcher:
    """Routes requests to devices and the daemon's own methods."""

    def __init__(self, devices: dict[str, Device], auth: Authenticator, *, plant: Plant | None = None,
                 max_batch: int = 50, events: EventBus | None = None, metrics: Metrics | None = None,
                 audit: AuditTrail | None = None, request_key_window: float = 300.0) -> None:
        self.devices = devices
        self.auth = auth
        self.plant = plant  # the simulated plant, only under --simulate
        self.max_batch = max_batch
        self.events = events or EventBus()  # numbered live state
        self.metrics = metrics or Metrics()  # Prometheus
        self.audit = audit or AuditTrail(None)  # one entry per action call
        self.once = OnceKeys(request_key_window)  # at-most-once actions
        self.started = time.monotonic()
        self.draining = False  # set at shutdown: new calls are refused
        self.methods: dict[str, Handler] = {}
        self.instant: set[str] = set()  # methods whose handler returns at once (no await): answered inline
        self._requests: dict[tuple[str, str], Any] = {}  # (method, outcome) -> its counter, looked up once
        self._durations: dict[str, Any] = {}  # method -> its histogram
        self._register_builtin()
        for device in devices.values():
            self._register_device(device)

    # -- registration -----------------------------------------------------------------------------
    def _register_builtin(self) -> None:
        self.methods["system.ping"] = self._ping
        self.methods["system.status"] = self._status
        self.methods["system.describe"] = self._describe
        self.methods["session.auth"] = self._session_auth
        self.methods["events.subscribe"] = self._subscribe
        self.methods["events.unsubscribe"] = self._unsubscribe
        if self.plant is not None:
            self.methods["sim.fault"] = self._sim_fault
            self.methods["sim.clear"] = self._sim_clear
            self.methods["sim.timeline"] = self._sim_timeline
        self.instant.update(m for m in self.methods if m != "session.auth")

    def add_device(self, device: Device) -> None:
        """Offer *device*'s methods (a config reload built it), replacing any of the same name."""
        self.remove_device(device.name)
        self.devices[device.name] = device
        self._register_device(device)

    def remove_device(self, name: str) -> None:
        """Withdraw a device and its methods; calls already running finish."""
        removed = self.devices.pop(name, None)
        if removed is not None:
            self.metrics.device_removed(name, removed.actions)
        prefix = f"{name}."
        for method in [m for m in self.methods if m.startswith(prefix)]:
            del self.methods[method]
            self.instant.discard(method)

    def _register_device(self, device: Device) -> None:
        def state(session: Session, params: dict[str, Any]) -> Any:
            _no_params(f"{device.name}.state", params)
            return device.state()

        self.methods[f"{device.name}.state"] = state
        self.instant.add(f"{device.name}.state")
        for action in device.actions:
            self.methods[f"{device.name}.{action}"] = self._action_handler(device, action)
        self.metrics.device_added(device.name, device.actions)

    def _action_handler(self, device: Device, action: str) -> Handler:
        method = f"{device.name}.{action}"

        async def run(session: Session, params: dict[str, Any]) -> Any:
            started = time.monotonic()
            replayed = False
            try:
                action_params = {k: v for k, v in params.items() if k != "request_key"}
                timeout = device.check_params(action, action_params)
                key = check_key(params["request_key"]) if "request_key" in params else None
                device.check_online()
                if key is None:
                    outcome = await device.run(action, action_params, timeout)
                else:
                    assert session.token is not None
                    outcome, replayed = await self.once.run(
                        session.token.name, key, method, action_params,
                        lambda: device.run(action, action_params, timeout))
            except RpcError as err:
                self.metrics.action_failed(device.name, action, err.name)
                await self.audit.write(session, method, params, err.name, (time.monotonic() - started) * 1000,
                                       error=err.to_wire())
                raise
            if replayed:
                outcome = {**outcome, "replayed": True}
            elif outcome.get("changed"):  # an actuation (a sensor read has no confirmation time)
                self.metrics.action_confirm.labels(device.name, action).observe(outcome["elapsed_ms"] / 1000)
            await self.audit.write(session, method, params, "ok", (time.monotonic() - started) * 1000,
                                   result=outcome)
            return outcome

        return run

    # -- the frame path ---------------------------------------------------------------------------
    def answer_now(self, session: Session, message: jsonrpc.Message) -> bytes | NotNow | None:
        """The reply to a frame that needs no waiting (invalid, or one instant method), or NOT_NOW.

        Most frames (ping, state, status, subscribe) are answered here, inline, without a task
        per frame; anything that may wait (actions, session.auth, batches) returns NOT_NOW.
        """
        if len(message.items) != 1:
            return NOT_NOW
        item = message.items[0]
        if isinstance(item, jsonrpc.Request) and item.method not in self.instant:
            return NOT_NOW
        reply = self._answer_instant(session, item)
        return jsonrpc.encode_frame([] if reply is None else [reply], message.batch)

    async def handle_text(self, session: Session, text: str | jsonrpc.Message) -> str | None:
        """One text frame (or its decoded message) in, the reply frame out (None: nothing to send)."""
        message = text if isinstance(text, jsonrpc.Message) else jsonrpc.decode(text, self.max_batch)
        if len(message.items) == 1:
            reply = await self._answer(session, message.items[0])
            return jsonrpc.encode([] if reply is None else [reply], message.batch)
        # Batch members run concurrently; the per-device queue keeps same-device
        # members in arrival order because their tasks start in that order.
        # session.auth is refused in a batch: one frame must not carry many guesses.
        replies = await asyncio.gather(*(self._answer(session, item) if not _is_auth(item)
                                         else self._refuse_batched_auth(item) for item in message.items))
        return jsonrpc.encode([r for r in replies if r is not None], message.batch)

    async def _refuse_batched_auth(self, item: jsonrpc.Request | jsonrpc.Invalid) -> dict[str, Any] | None:
        assert isinstance(item, jsonrpc.Request)
        error = InvalidRequest("session.auth cannot be part of a batch: send it on its own")
        return self._settle(item, time.perf_counter(), error=error)

    async def answer_call(self, session: Session, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """One call from a bridge (WAMP): the JSON-RPC response object, through every check, queue,
        count and audit a WebSocket call goes through."""
        reply = await self._answer(session, jsonrpc.Request(method, params, 0))
        assert reply is not None  # a request with an id is always answered
        return reply

    def answer_call_now(self, session: Session, method: str, params: dict[str, Any]) -> dict[str, Any] | NotNow:
        """answer_call for a method that answers at once (ping, state, status): no task, no await;
        NOT_NOW for the others."""
        if method not in self.instant:
            return NOT_NOW
        reply = self._answer_instant(session, jsonrpc.Request(method, params, 0))
        assert reply is not None
        return reply

    def _answer_instant(self, session: Session, item: jsonrpc.Request | jsonrpc.Invalid) -> dict[str, Any] | None:
        if isinstance(item, jsonrpc.Invalid):
            self._count("unknown", item.error.name)
            return jsonrpc.error(item.id, item.error)
        started = time.perf_counter()
        try:
            handler, params = self._resolve(session, item.method, item.params)
            value = handler(session, params)
        except Exception as exc:
            return self._settle(item, started, error=exc)
        return self._settle(item, started, value=value)

    async def _answer(self, session: Session, item: jsonrpc.Request | jsonrpc.Invalid) -> dict[str, Any] | None:
        if isinstance(item, jsonrpc.Invalid) or item.method in self.instant:
            return self._answer_instant(session, item)
        started = time.perf_counter()
        try:
            handler, params = self._resolve(session, item.method, item.params)
            value = await handler(session, params)
        except Exception as exc:
            return self._settle(item, started, error=exc)
        return self._settle(item, started, value=value)

    def _settle(self, item: jsonrpc.Request, started: float, value: Any = None,
                error: Exception | None = None) -> dict[str, Any] | None:
        """Count the call, and make its reply (None for a notification)."""
        label = item.method if item.method in self.methods else "unknown"  # never a client's string
        if error is None:
            reply = jsonrpc.result(item.id, value)
            outcome = "ok"
        else:
            if not isinstance(error, RpcError):
                log.error("internal error in %s", label, exc_info=error)
                error = InternalError()
            reply = jsonrpc.error(item.id, error)
            outcome = error.name
        self._count(label, outcome)
        timer = self._durations.get(label)
        if timer is None:
            timer = self._durations[label] = self.metrics.rpc_duration.labels(label)
        timer.observe(time.perf_counter() - started)
        return None if item.is_notification else reply

    def _count(self, label: str, outcome: str) -> None:
        counter = self._requests.get((label, outcome))
        if counter is None:
            counter = self._requests[(label, outcome)] = self.metrics.rpc_requests.labels(label, outcome)
        counter.inc()

    def _resolve(self, session: Session, method: str, params: Any) -> tuple[Handler, dict[str, Any]]:
        """Every check before a method runs, in the documented order; raises the first that fails."""
        if self.draining:
            raise Unavailable("the daemon is shutting down", reason="shutting down")
        if not session.authenticated and method not in OPEN_METHODS:
            raise Unauthorized("authenticate first: session.auth or an Authorization: Bearer header",
                               method=_short(method))
        if session.bucket is not None:
            wait = session.bucket.take()
            if wait:
                raise RateLimited("too many calls: slow down", retry_after_s=round(wait, 3))
        entry = self.methods.get(method)
        if entry is None:
            raise MethodNotFound(f"no method {_short(method)!r}", method=_short(method))
        if method not in OPEN_METHODS and not self._may_call(session, method):
            role = session.role.name if session.role is not None else None
            raise Unauthorized(f"role {role!r} may not call {method}", method=method)
        if isinstance(params, list):
            if params:
                raise InvalidParams("params must be an object (named parameters)")
            params = {}
        elif params is None:
            params = {}
        return entry, params

    def _may_call(self, session: Session, method: str) -> bool:
        assert session.role is not None
        if method.startswith("sim.") and session.role.name != "admin":
            return False
        return self.auth.may_call(session.role, method)

    # -- built-in methods -------------------------------------------------------------------------
    def _ping(self, session: Session, params: dict[str, Any]) -> Any:
        _no_params("system.ping", params)
        return {"pong": True}

    async def _session_auth(self, session: Session, params: dict[str, Any]) -> Any:
        _no_params("session.auth", params, ("token",))
        token = params.get("token")
        if not isinstance(token, str):
            raise InvalidParams('session.auth needs {"token": "..."}', param="token")
        if session.authenticated:
            raise InvalidParams("this connection is already authenticated", param="token")
        if session.extra.get(AUTH_PENDING):
            raise InvalidRequest("a session.auth is already being answered on this connection: wait for it")
        session.extra[AUTH_PENDING] = True
        try:
            verdict = await self.auth.login(session, token)
        finally:
            session.extra.pop(AUTH_PENDING, None)
        if verdict.locked_s:
            self.metrics.auth_failures.inc()
            raise Unauthorized("too many failed authentications from this address", method="session.auth",
                               retry_after_s=round(verdict.locked_s, 1))
        if not verdict.ok:
            self.metrics.auth_failures.inc()
            log.warning("session.auth failed from %s", session.peer)
            raise Unauthorized("invalid token", method="session.auth")
        log.info("session from %s authenticated as %s (role %s)", session.peer, session.who,
                 session.role.name if session.role else "?")
        return {"role": session.role.name if session.role else None}

    def device_status(self, device: Device) -> dict[str, Any]:
        last = device.last_update
        out: dict[str, Any] = {
            "kind": device.kind,
            "online": device.online,
            "state": device.state(),
            "last_update": None if last is None else iso(last),
        }
        out.update(device.status())
        return out

    def _status(self, session: Session, params: dict[str, Any]) -> Any:
        _no_params("system.status", params)
        return {
            "devices": {name: self.device_status(d) for name, d in self.devices.items()},
            "uptime_s": round(time.monotonic() - self.started, 3),
            "version": __version__,
            "seq": self.events.seq,  # subscribe with since_seq=seq to continue from this snapshot
            "epoch": self.events.epoch,
        }

    def _subscribe(self, session: Session, params: dict[str, Any]) -> Any:
        return self.events.subscribe(_link(session), params)

    def _unsubscribe(self, session: Session, params: dict[str, Any]) -> Any:
        return self.events.unsubscribe(_link(session), params)

    def _describe(self, session: Session, params: dict[str, Any]) -> Any:
        _no_params("system.describe", params)
        return {
            "devices": {name: d.describe() for name, d in self.devices.items()},
            "methods": sorted(m for m in self.methods if session.role and self._may_call(session, m)),
            "version": __version__,
        }

    def _sim_device(self, params: dict[str, Any]) -> str:
        device = params.get("device")
        if not isinstance(device, str) or device not in self.devices:
            raise InvalidParams("device must name a configured device", param="device")
        return device

    def _sim_fault(self, session: Session, params: dict[str, Any]) -> Any:
        assert self.plant is not None
        _no_params("sim.fault", params, ("device", "fault"))
        device = self._sim_device(params)
        fault = params.get("fault")
        if not isinstance(fault, str):
            raise InvalidParams("fault must be a string", param="fault", faults=self.plant.faults(device))
        try:
            self.plant.inject(device, fault)
        except UnknownFault as exc:
            raise InvalidParams(str(exc), param="fault", faults=self.plant.faults(device)) from None
        self.audit.record(session, "sim.fault", params, "ok", 0.0)
        return {"device": device, "faults": self.plant.active_faults(device)}

    def _sim_timeline(self, session: Session, params: dict[str, Any]) -> Any:
        """When the simulated device physically moved (monotonic clock): for benchmarks and tests.
        With ``since`` (monotonic seconds), also the plant's record of every output and position
        change after it (bench/soak.py checks results and the audit trail against it)."""
        assert self.plant is not None
        _no_params("sim.timeline", params, ("device", "since"))
        device = self._sim_device(params)
        since = params.get("since")
        if since is not None:
            if isinstance(since, bool) or not isinstance(since, (int, float)):
                raise InvalidParams("since must be a number (monotonic seconds)", param="since")
            return {"device": device, **self.plant.history(device, float(since))}
        try:
            return {"device": device, "moved_at": self.plant.timeline(device)}
        except UnknownFault as exc:
            raise InvalidParams(str(exc), param="device") from None

    def _sim_clear(self, session: Session, params: dict[str, Any]) -> Any:
        assert self.plant is not None
        _no_params("sim.clear", params, ("device",))
        device = self._sim_device(params)
        try:
            self.plant.clear(device)
        except UnknownFault as exc:
            raise InvalidParams(str(exc), param="device") from None
        self.audit.record(session, "sim.clear", params, "ok", 0.0)
        return {"device": device, "faults": self.plant.active_faults(device)}


def _link(session: Session) -> Any:
    """The WebSocket events are sent on; other front doors have their own event topics."""
    ws = session.extra.get("ws")
    if ws is None:
        raise InvalidRequest("events.subscribe is for WebSocket links: this front door publishes every event "
                             "on its own topics")
    return ws


def binary_frame_error() -> str:
    return jsonrpc.dumps(jsonrpc.error(None, InvalidRequest("binary frames are not supported: send JSON text")))
