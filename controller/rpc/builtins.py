"""The daemon's own methods: ``system.*``, ``session.auth``, ``events.*`` (README, *Methods*).

Registered through :meth:`Dispatcher.register` like any other: the session methods by every
listener (a node's and the fleet's), ``system.status`` and ``system.describe`` by whoever knows the
devices (:func:`register_node_methods` for a node's own; the fleet registers its own view).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from controller import __version__
from controller.devices.base import Device
from controller.rpc.dispatch import Dispatcher
from controller.rpc.events import EventBus
from controller.rpc.metrics import Metrics
from controller.security.auth import Authenticator, Session
from controller.wire.clock import iso
from controller.wire.errors import InvalidParams, InvalidRequest, Unauthorized, refuse_unknown_params

log = logging.getLogger(__name__)


def register_session_methods(dispatcher: Dispatcher, auth: Authenticator, events: EventBus,
                             metrics: Metrics) -> list[Callable[[], None]]:
    """``system.ping``, ``session.auth``, ``events.subscribe`` and ``events.unsubscribe``."""

    def ping(session: Session, params: dict[str, Any]) -> Any:
        refuse_unknown_params("system.ping", params)
        return {"pong": True}

    async def session_auth(session: Session, params: dict[str, Any]) -> Any:
        refuse_unknown_params("session.auth", params, ("token",))
        token = params.get("token")
        if not isinstance(token, str):
            raise InvalidParams('session.auth needs {"token": "..."}', param="token")
        if session.authenticated:
            raise InvalidParams("this connection is already authenticated", param="token")
        if session.auth_pending:
            raise InvalidRequest("a session.auth is already being answered on this connection: wait for it")
        session.auth_pending = True
        try:
            verdict = await auth.login(session, token)
        finally:
            session.auth_pending = False
        if verdict.locked_s:
            metrics.auth_failures.inc()
            raise Unauthorized("too many failed authentications from this address", method="session.auth",
                               retry_after_s=round(verdict.locked_s, 1))
        if not verdict.ok:
            metrics.auth_failures.inc()
            raise Unauthorized("invalid token", method="session.auth")
        log.info("session from %s authenticated as %s (role %s)", session.peer, session.who,
                 session.role.name if session.role else "?")
        return {"role": session.role.name if session.role else None}

    def subscribe(session: Session, params: dict[str, Any]) -> Any:
        return events.subscribe(_events_link(session), params)

    def unsubscribe(session: Session, params: dict[str, Any]) -> Any:
        return events.unsubscribe(_events_link(session), params)

    return [
        dispatcher.register("system.ping", ping, instant=True),
        dispatcher.register("session.auth", session_auth, open=True),
        dispatcher.register("events.subscribe", subscribe, instant=True),
        dispatcher.register("events.unsubscribe", unsubscribe, instant=True),
    ]


def _events_link(session: Session) -> Any:
    """The WebSocket connection events go to; other front doors have their own event topics."""
    link = session.events_to() if session.events_to is not None else None
    if link is None:
        raise InvalidRequest("events.subscribe is for WebSocket links: this front door publishes every event "
                             "on its own topics")
    return link


def device_status(device: Device) -> dict[str, Any]:
    """One device's entry in ``system.status``."""
    last = device.last_update
    out: dict[str, Any] = {
        "kind": device.kind,
        "online": device.online,
        "state": device.state(),
        "last_update": None if last is None else iso(last),
    }
    out.update(device.status())
    return out


def register_node_methods(dispatcher: Dispatcher, devices: Mapping[str, Device], events: EventBus,
                          started: float) -> list[Callable[[], None]]:
    """``system.status`` and ``system.describe`` over this daemon's own *devices* (a live mapping)."""

    def status(session: Session, params: dict[str, Any]) -> Any:
        refuse_unknown_params("system.status", params)
        return {
            "devices": {name: device_status(d) for name, d in devices.items()},
            "uptime_s": round(time.monotonic() - started, 3),
            "version": __version__,
            "seq": events.seq,  # subscribe with since_seq=seq to continue from this snapshot
            "epoch": events.epoch,
        }

    def describe(session: Session, params: dict[str, Any]) -> Any:
        refuse_unknown_params("system.describe", params)
        return {
            "devices": {name: d.describe() for name, d in devices.items()},
            "methods": dispatcher.methods_for(session.role),
            "version": __version__,
        }

    return [
        dispatcher.register("system.status", status, instant=True),
        dispatcher.register("system.describe", describe, instant=True),
    ]
