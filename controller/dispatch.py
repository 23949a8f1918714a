"""From a decoded request to a result: auth, method lookup, role, params, device.

Checks run in CONTRACT §3's order: authentication, method exists, role may
call it, params, device online. Nothing reaches a device before all pass.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from controller import __version__, jsonrpc
from controller.auth import Authenticator, Session
from controller.clock import iso
from controller.devices import Device
from controller.errors import (
    InternalError,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    RpcError,
    Unauthorized,
    Unavailable,
)
from drivers.sim.plant import Plant, UnknownFault

log = logging.getLogger(__name__)

Handler = Callable[[Session, dict[str, Any]], Awaitable[Any]]
OPEN_METHODS = frozenset({"session.auth"})  # callable before authentication


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
                 max_batch: int = 50) -> None:
        self.devices = devices
        self.auth = auth
        self.plant = plant  # the simulated plant, only under --simulate
        self.max_batch = max_batch
        self.started = time.monotonic()
        self.draining = False  # set at shutdown: new calls are refused
        self.methods: dict[str, Handler] = {}
        self._register_builtin()
        for device in devices.values():
            self._register_device(device)

    # -- registration -----------------------------------------------------------------------------
    def _register_builtin(self) -> None:
        self.methods["system.ping"] = self._ping
        self.methods["system.status"] = self._status
        self.methods["system.describe"] = self._describe
        self.methods["session.auth"] = self._session_auth
        if self.plant is not None:
            self.methods["sim.fault"] = self._sim_fault
            self.methods["sim.clear"] = self._sim_clear

    def _register_device(self, device: Device) -> None:
        async def state(session: Session, params: dict[str, Any]) -> Any:
            _no_params(f"{device.name}.state", params)
            return device.state()

        self.methods[f"{device.name}.state"] = state
        for action in device.actions:
            self.methods[f"{device.name}.{action}"] = self._action_handler(device, action)

    def _action_handler(self, device: Device, action: str) -> Handler:
        async def run(session: Session, params: dict[str, Any]) -> Any:
            timeout = device.check_params(action, params)
            device.check_online()
            try:
                outcome = await device.run(action, params, timeout)
            except RpcError as err:
                log.warning("%s.%s by %s from %s: %s %s", device.name, action, session.who, session.peer,
                            err.name, err.data or "")
                raise
            if "elapsed_ms" in outcome:  # an actuation; a sensor read is not worth a log line
                log.info("%s.%s by %s from %s: %s in %.1f ms (changed=%s)", device.name, action, session.who,
                         session.peer, outcome["state"], outcome["elapsed_ms"], outcome["changed"])
            return outcome

        return run

    # -- the frame path ---------------------------------------------------------------------------
    async def handle_text(self, session: Session, text: str) -> str | None:
        """One text frame in, the reply frame out (None: nothing to send)."""
        message = jsonrpc.decode(text, self.max_batch)
        if len(message.items) == 1:
            reply = await self._answer(session, message.items[0])
            return jsonrpc.encode([] if reply is None else [reply], message.batch)
        # Batch members run concurrently; the per-device queue keeps same-device
        # members in arrival order because their tasks start in that order.
        replies = await asyncio.gather(*(self._answer(session, item) for item in message.items))
        return jsonrpc.encode([r for r in replies if r is not None], message.batch)

    async def _answer(self, session: Session, item: jsonrpc.Request | jsonrpc.Invalid) -> dict[str, Any] | None:
        if isinstance(item, jsonrpc.Invalid):
            return jsonrpc.error(item.id, item.error)
        try:
            value = await self.call(session, item.method, item.params)
        except RpcError as err:
            return None if item.is_notification else jsonrpc.error(item.id, err)
        except Exception:
            log.exception("internal error in %s", item.method if item.method in self.methods else "unknown method")
            return None if item.is_notification else jsonrpc.error(item.id, InternalError())
        return None if item.is_notification else jsonrpc.result(item.id, value)

    async def call(self, session: Session, method: str, params: Any) -> Any:
        if self.draining:
            raise Unavailable("the daemon is shutting down", reason="shutting down")
        if not session.authenticated and method not in OPEN_METHODS:
            raise Unauthorized("authenticate first: session.auth or an Authorization: Bearer header",
                               method=_short(method))
        entry = self.methods.get(method)
        if entry is None:
            raise MethodNotFound(f"no method {_short(method)!r}", method=_short(method))
        if method not in OPEN_METHODS and not self._may_call(session, method):
            raise Unauthorized(f"role {session.role.name!r} may not call {method}", method=method)
        if isinstance(params, list):
            if params:
                raise InvalidParams("params must be an object (named parameters)")
            params = {}
        elif params is None:
            params = {}
        return await entry(session, params)

    def _may_call(self, session: Session, method: str) -> bool:
        assert session.role is not None
        if method.startswith("sim.") and session.role.name != "admin":
            return False
        return self.auth.may_call(session.role, method)

    # -- built-in methods -------------------------------------------------------------------------
    async def _ping(self, session: Session, params: dict[str, Any]) -> Any:
        _no_params("system.ping", params)
        return {"pong": True}

    async def _session_auth(self, session: Session, params: dict[str, Any]) -> Any:
        _no_params("session.auth", params, ("token",))
        token = params.get("token")
        if not isinstance(token, str):
            raise InvalidParams('session.auth needs {"token": "..."}', param="token")
        if not self.auth.login(session, token):
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
        if not device.online:
            since = device.offline_since()
            out["since"] = None if since is None else iso(since)
            out["reason"] = next((p.offline_reason for p in device.points if not p.online), None)
        return out

    async def _status(self, session: Session, params: dict[str, Any]) -> Any:
        _no_params("system.status", params)
        return {
            "devices": {name: self.device_status(d) for name, d in self.devices.items()},
            "uptime_s": round(time.monotonic() - self.started, 3),
            "version": __version__,
        }

    async def _describe(self, session: Session, params: dict[str, Any]) -> Any:
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

    async def _sim_fault(self, session: Session, params: dict[str, Any]) -> Any:
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
        return {"device": device, "faults": self.plant.active_faults(device)}

    async def _sim_clear(self, session: Session, params: dict[str, Any]) -> Any:
        assert self.plant is not None
        _no_params("sim.clear", params, ("device",))
        device = self._sim_device(params)
        try:
            self.plant.clear(device)
        except UnknownFault as exc:
            raise InvalidParams(str(exc), param="device") from None
        return {"device": device, "faults": self.plant.active_faults(device)}


def binary_frame_error() -> str:
    return jsonrpc.dumps(jsonrpc.error(None, InvalidRequest("binary frames are not supported: send JSON text")))
