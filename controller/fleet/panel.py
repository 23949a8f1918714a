"""The fleet's wall panel and JSON-RPC front door: every node's devices, named ``<node>.<device>``.

A :class:`FleetPanel` is made from a context built from the fleet's own config
(:func:`controller.runtime.context.build_context`) and serves through the very listener a node
uses (:class:`controller.http.server.HttpServer`): tokens, roles, rate limits, origins, TLS,
``allowed_hosts``, ``trusted_proxies``, connection caps and the audit trail are honoured the same
way, because it is the same code. Its method table holds the fleet's ``system.status``,
``system.describe`` and ``fleet.status``, and for every device the aggregator knows
``<node>.<device>.state`` and ``<node>.<device>.<action>``, forwarded through the router to
``pictl.<node>.<device>.<action>``; devices of a node that is down are offline, so the panel greys
them and disables their buttons. A forwarded answer names its device as the fleet does
(``"device": "pi02.door", "node": "pi02"``). A simulated node's ``sim.*`` methods are offered as
``<node>.sim.*``, to the admin role only, as on the node.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import Gauge

from controller import __version__
from controller.fleet.aggregator import CALL_SLACK_S, DEFAULT_CALL_TIMEOUT_S, Aggregator
from controller.fleet.view import DEVICE_FIELDS
from controller.http.server import HttpServer
from controller.runtime.context import build_context
from controller.security.auth import Session
from controller.settings.load import Config
from controller.wire import errors
from controller.wire.clock import iso
from controller.wire.errors import refuse_unknown_params

log = logging.getLogger(__name__)


class FleetPanel:
    """The fleet's wall panel and JSON-RPC front door: devices named ``<node>.<device>``."""

    def __init__(self, aggregator: Aggregator, config: Config, *, host: str | None = None,
                 port: int | None = None) -> None:
        self.aggregator = aggregator
        self.view = aggregator.view
        self.ctx = ctx = build_context(config)
        self.dispatcher = ctx.dispatcher
        ctx.dispatcher.register("system.status", self._status, instant=True)
        ctx.dispatcher.register("system.describe", self._describe, instant=True)
        ctx.dispatcher.register("fleet.status", lambda session, params: self.view.snapshot(), instant=True)
        self.server = HttpServer(ctx, host=host, port=port)
        self._methods: dict[str, Callable[[], None]] = {}  # the forwarded methods offered -> their withdraw
        connected = Gauge("pictl_wamp_connected", "1 while the aggregator is joined to the WAMP router",
                          registry=ctx.metrics.registry)
        self._unsubscribe = [aggregator.on_link(lambda up: connected.set(1 if up else 0)),
                             self.view.on_change(self._changed)]

    @property
    def url(self) -> str:
        return self.server.url

    async def start(self) -> None:
        await self.server.start()
        scheme = "https" if self.server.tls else "http"
        log.info("fleet panel on %s://%s:%d/", scheme, self.server.host, self.server.port)

    async def stop(self) -> None:
        for undo in self._unsubscribe:
            undo()
        self.server.stop_accepting()
        self.dispatcher.draining = True
        await self.server.drain(5.0)
        await self.server.close()
        await self.ctx.aclose()  # the audit file is closed off the loop

    # -- the device table -------------------------------------------------------------------------
    def _sync_methods(self) -> bool:
        """Offer ``<node>.<device>.<action>`` and ``.state`` for every known device, and a simulated
        node's ``<node>.sim.*``; True on change."""
        wanted: dict[str, Any] = {}
        simulation: set[str] = set()
        for node, view in self.view.nodes.items():
            for device, described in view.described.items():
                name = f"{node}.{device}"
                wanted[f"{name}.state"] = self._state_handler(node, device)
                for action in (described.get("actions") or {}):
                    cap, own = described.get("max_timeout"), described.get("timeout")
                    wanted[f"{name}.{action}"] = self._forward(
                        node, f"{device}.{action}", float(cap) if isinstance(cap, (int, float)) else None,
                        float(own) if isinstance(own, (int, float)) else None)
            for method in view.methods:
                if method.startswith("sim."):
                    simulation.add(f"{node}.{method}")
                    wanted[f"{node}.{method}"] = self._forward(node, method, None)
        changed = set(wanted) != set(self._methods)
        for method in set(self._methods) - set(wanted):
            self._methods.pop(method)()
        for method, handler in wanted.items():
            if method in self._methods:
                self._methods.pop(method)()
            self._methods[method] = self.dispatcher.register(method, handler, instant=method.endswith(".state"),
                                                             admin_only=method in simulation)
        return changed

    def _state_handler(self, node: str, device: str) -> Callable[[Session, dict[str, Any]], Any]:
        def state(session: Session, params: dict[str, Any]) -> Any:
            refuse_unknown_params(f"{node}.{device}.state", params)
            return self.view.node(node).devices.get(device, {}).get("state")

        return state

    def _forward(self, node: str, called: str, cap: float | None,
                 own: float | None = None) -> Callable[[Session, dict[str, Any]], Any]:
        """``<node>.<called>`` here: ``pictl.<node>.<called>`` through the router, audited here too;
        its answer (or error) names the device as the fleet does. Its deadline is twice the call's
        timeout plus a margin: the one it asks for (up to *cap*), else the device's own (*own*)."""
        method = f"{node}.{called}"
        limit = DEFAULT_CALL_TIMEOUT_S if cap is None else cap
        usual = min(own, limit) if own is not None and own > 0 else limit

        async def run(session: Session, params: dict[str, Any]) -> Any:
            started = time.monotonic()
            asked = params.get("timeout")
            timeout = min(float(asked), limit) if isinstance(asked, (int, float)) and asked > 0 else usual
            try:
                result = as_fleet(node, await self.aggregator.call(node, called, params, 2 * timeout + CALL_SLACK_S))
            except errors.RpcError as err:
                err.data = as_fleet(node, err.data)
                await self.ctx.audit.write(session, method, params, err.name, started, error=err.to_wire())
                raise
            await self.ctx.audit.write(session, method, params, "ok", started,
                                       result=result if isinstance(result, dict) else None)
            return result

        return run

    # -- built-in methods, fleet-wide -------------------------------------------------------------
    def _devices(self) -> dict[str, dict[str, Any]]:
        out = {}
        for node, view in sorted(self.view.nodes.items()):
            for device, status in view.devices.items():
                entry = {k: status.get(k) for k in DEVICE_FIELDS}
                if not view.online:
                    entry.update(online=False, since=None if view.since is None else iso(view.since),
                                 reason=f"node {node} is offline")
                elif not status.get("online"):
                    entry.update(since=status.get("since"), reason=status.get("reason"))
                entry["node"] = node
                out[f"{node}.{device}"] = entry
        return out

    def _status(self, session: Session, params: dict[str, Any]) -> Any:
        refuse_unknown_params("system.status", params)
        return {"devices": self._devices(), "nodes": self.view.snapshot()["nodes"],
                "uptime_s": round(time.monotonic() - self.ctx.started, 3), "version": __version__,
                "seq": self.ctx.events.seq, "epoch": self.ctx.events.epoch}

    def _describe(self, session: Session, params: dict[str, Any]) -> Any:
        refuse_unknown_params("system.describe", params)
        devices = {}
        for node, view in sorted(self.view.nodes.items()):
            for device, described in view.described.items():
                devices[f"{node}.{device}"] = {**described, "node": node, "label": device}
        return {"devices": devices, "methods": self.dispatcher.methods_for(session.role), "version": __version__,
                "nodes": {n: {"online": v.online} for n, v in sorted(self.view.nodes.items())}}

    # -- fleet changes become panel events --------------------------------------------------------
    def _changed(self, node: str, what: str, data: dict[str, Any]) -> None:
        view = self.view.nodes[node]
        if what == "event":
            topic = str(data.get("topic", ""))
            body = data.get("data") if isinstance(data.get("data"), dict) else {}
            assert isinstance(body, dict)
            if topic == "system.status":
                self.ctx.events.publish("system.status", {**body, "device": f"{node}.{body.get('device')}"})
            else:
                self.ctx.events.publish(f"{node}.{topic}", body)
            return
        if self._sync_methods():
            self.ctx.events.publish("system.describe", {"node": node, "online": view.online})
        self.ctx.events.publish("fleet.node", {"node": node, "online": view.online,
                                           "since": None if view.since is None else iso(view.since)})
        for device, status in self._devices().items():
            if status["node"] == node:
                self.ctx.events.publish("system.status", {"device": device, "online": status["online"],
                                                      **({"since": status.get("since"),
                                                          "reason": status.get("reason")}
                                                         if not status["online"] else {})})
                if view.online:
                    self.ctx.events.publish(f"{device}.state", {**(status.get("state") or {}), "cause": "resync"})



def as_fleet(node: str, answer: Any) -> Any:
    """A node's answer (or error data) as the fleet says it: its device named ``<node>.<device>``,
    and the node named."""
    if not isinstance(answer, dict) or not isinstance(answer.get("device"), str):
        return answer
    return {**answer, "device": f"{node}.{answer['device']}", "node": node}


async def serve(url: str, realm: str, config: Config | None, *, host: str | None = None, port: int | None = None,
                authid: str | None = None, ticket: str | None = None, max_retry_delay: float = 10.0) -> None:
    """``pictl aggregate``: run the aggregator (and the panel when *config* gives it tokens) until
    SIGTERM or SIGINT."""
    aggregator = Aggregator(url, realm, authid=authid, ticket=ticket, max_retry_delay=max_retry_delay)
    panel = FleetPanel(aggregator, config, host=host, port=port) if config is not None else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        if panel is not None:
            await panel.start()
        aggregator.start()
        await stop.wait()
        log.info("signal received: leaving the router")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if panel is not None:
            await panel.stop()
        await aggregator.stop()
