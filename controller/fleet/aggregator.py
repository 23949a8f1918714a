"""The fleet aggregator: one view of every node on a WAMP router, and one wall panel for them all.

``pictl aggregate`` joins the router and keeps :class:`FleetView` — every node, online or not,
and every device with its kind, online flag, state and last update — from:

- the router's meta API: ``wamp.registration.list`` at join, ``wamp.registration.on_create`` for
  a node that registers ``pictl.<node>.system.status`` (its session id is remembered), and
  ``wamp.session.on_leave`` for a node session that goes away (offline at once: the router says so
  the moment the session ends, and after its ping timeout when the network is lost);
- each node's ``system.describe`` and ``system.status`` when it joins (and again when its event
  ``seq`` shows a gap), then its events ``pictl.<node>.<topic>``.

It registers ``pictl.fleet.status`` (``{"nodes": {N: {"online", "last_update", "devices": ...}}}``)
and publishes the same object to ``pictl.fleet.status`` whenever it changes.

With a listener (:class:`FleetPanel`) it also serves the wall panel for the whole fleet: the same
JSON-RPC front door as a node (tokens, roles, rate limits, origins, events with seq and resume),
over a dispatcher whose devices are ``<node>.<device>``. ``pi01.door.open`` is forwarded through
the router to ``pictl.pi01.door.open``; devices of a node that is down are offline, so the panel
greys them and disables their buttons.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from autobahn.asyncio.wamp import ApplicationSession
from autobahn.wamp.exception import ApplicationError
from autobahn.wamp.types import SubscribeOptions
from prometheus_client import Gauge

from controller import __version__
from controller.bridges.wamp.bridge import Link, component
from controller.http.server import Server
from controller.rpc.dispatch import Dispatcher
from controller.rpc.events import EventBus
from controller.rpc.metrics import Metrics
from controller.security.audit import AuditTrail
from controller.security.auth import Authenticator, Session
from controller.settings.load import Config
from controller.wire import errors
from controller.wire.clock import iso

log = logging.getLogger(__name__)

FLEET_STATUS = "pictl.fleet.status"
NODE_MARK = "system.status"  # the procedure whose registration says "a node is here"
FETCH_TIMEOUT_S = 5.0  # describe/status of a node that just joined
CALL_SLACK_S = 5.0  # a forwarded action may take its timeout twice (queue + confirmation), plus this
DEFAULT_CALL_TIMEOUT_S = 30.0
DEVICE_FIELDS = ("kind", "online", "state", "last_update")


def node_of(uri: str, suffix: str) -> str | None:
    """``pictl.<node>.<suffix>`` -> node (None for anything else, the fleet's own URIs included)."""
    if not uri.startswith("pictl.") or not uri.endswith("." + suffix):
        return None
    node = uri[len("pictl."):-len(suffix) - 1]
    return node if node and "." not in node and node not in ("fleet", "error") else None


@dataclass
class NodeView:
    """What the fleet knows about one node."""

    name: str
    online: bool = False
    session: int | None = None  # its WAMP session id while online
    last_update: float | None = None  # wall clock of the newest thing heard from it
    since: float | None = None  # when it went offline
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> status fields
    described: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> system.describe entry
    seq: int | None = None  # the last event seq seen (a gap: fetch system.status again)
    epoch: str | None = None

    def snapshot(self) -> dict[str, Any]:
        return {
            "online": self.online,
            "last_update": None if self.last_update is None else iso(self.last_update),
            "devices": {name: {k: d.get(k) for k in DEVICE_FIELDS} for name, d in self.devices.items()},
        }


class FleetView:
    """Every node and device; pure state, fed by the aggregator, read by the panel and fleet.status."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeView] = {}
        self.listeners: list[Callable[[str, str, dict[str, Any]], None]] = []  # (node, what, data)

    def snapshot(self) -> dict[str, Any]:
        return {"nodes": {name: node.snapshot() for name, node in sorted(self.nodes.items())}}

    def node(self, name: str) -> NodeView:
        view = self.nodes.get(name)
        if view is None:
            view = self.nodes[name] = NodeView(name)
        return view

    def _emit(self, node: str, what: str, data: dict[str, Any]) -> None:
        for listener in tuple(self.listeners):
            try:
                listener(node, what, data)
            except Exception:
                log.exception("fleet listener failed for %s %s", node, what)

    def joined(self, name: str, session: int | None, described: dict[str, Any], status: dict[str, Any]) -> None:
        """A node's first (or fresh) picture: its describe and status results."""
        view = self.node(name)
        was_online = view.online
        view.online, view.session, view.since = True, session, None
        view.last_update = time.time()
        view.described = dict(described.get("devices") or {})
        view.devices = {d: dict(s) for d, s in (status.get("devices") or {}).items()}
        view.seq, view.epoch = status.get("seq"), status.get("epoch")
        self._emit(name, "joined", {"was_online": was_online})

    def left(self, name: str, reason: str) -> None:
        view = self.nodes.get(name)
        if view is None or not view.online:
            return
        view.online, view.session = False, None
        view.since = view.last_update = time.time()
        self._emit(name, "left", {"reason": reason})

    def event(self, name: str, event: dict[str, Any]) -> bool:
        """Apply one node event; False when it shows a gap (the caller refetches system.status)."""
        view = self.nodes.get(name)
        if view is None or not view.online or not isinstance(event, dict):
            return True
        seq = event.get("seq")
        in_order = not isinstance(seq, int) or view.seq is None or seq == view.seq + 1
        if isinstance(seq, int):
            if view.seq is not None and seq <= view.seq:
                return True  # already seen (the status fetch overtook it)
            view.seq = seq
        view.last_update = time.time()
        topic = str(event.get("topic", ""))
        data = event.get("data") if isinstance(event.get("data"), dict) else {}
        assert isinstance(data, dict)
        if topic == "system.status":
            device = view.devices.get(str(data.get("device")))
            if device is not None:
                device["online"] = bool(data.get("online"))
                for key in ("since", "reason"):
                    device.pop(key, None)
                    if key in data:
                        device[key] = data[key]
        else:
            device_name, _, what = topic.rpartition(".")
            device = view.devices.get(device_name)
            if device is not None and what in ("state", "reading"):
                device["state"] = {k: v for k, v in data.items() if k != "cause"}
                device["last_update"] = event.get("time")
        self._emit(name, "event", event)
        return in_order


class Aggregator:
    """The fleet view's WAMP side: meta events, node events, ``pictl.fleet.status``."""

    def __init__(self, url: str, realm: str, *, authid: str | None = None, ticket: str | None = None,
                 view: FleetView | None = None, max_retry_delay: float = 10.0) -> None:
        self.url = url
        self.realm = realm
        self.view = view or FleetView()
        self.view.listeners.append(self._changed)
        self._sessions: dict[int, str] = {}  # WAMP session id -> node
        self._fetching: dict[str, asyncio.Task[None]] = {}
        self.link_listeners: list[Callable[[bool], None]] = []  # told when the router is joined (True) or lost
        self.link = Link("fleet aggregator", lambda: component(url, realm, authid=authid, ticket=ticket,
                                                               max_retry_delay=max_retry_delay),
                         self._joined, self._lost, max_retry_delay)

    @property
    def session(self) -> ApplicationSession | None:
        return self.link.session

    def start(self) -> None:
        log.info("fleet: joining %s realm %s", self.url, self.realm)
        self.link.start()

    async def stop(self) -> None:
        for task in self._fetching.values():
            task.cancel()
        await self.link.stop()

    # -- joining ----------------------------------------------------------------------------------
    async def _joined(self, session: ApplicationSession) -> None:
        await session.subscribe(self._session_left, "wamp.session.on_leave")
        await session.subscribe(self._registered, "wamp.registration.on_create")
        await session.subscribe(self._node_event, "pictl.", options=SubscribeOptions(match="prefix",
                                                                                     details_arg="details"))
        await session.register(self.view.snapshot, FLEET_STATUS)
        registrations = await session.call("wamp.registration.list")
        found = 0
        for registration_id in registrations.get("exact", []):
            try:
                info = await session.call("wamp.registration.get", registration_id)
                node = node_of(str(info.get("uri", "")), NODE_MARK) if info else None
                if node is None:
                    continue
                callees = await session.call("wamp.registration.list_callees", registration_id)
            except ApplicationError:
                continue  # gone meanwhile
            found += 1
            self._node_seen(session, node, callees[0] if callees else None)
        for name in [n for n, v in self.view.nodes.items() if v.online and v.session not in self._sessions]:
            self.view.left(name, "not on the router any more")
        log.info("fleet: joined realm %s; %d node(s) on the router", self.realm, found)
        for listener in self.link_listeners:
            listener(True)

    def _lost(self) -> None:
        log.warning("fleet: lost the router; rejoining")
        for listener in self.link_listeners:
            listener(False)
        self._sessions.clear()
        for name in list(self.view.nodes):
            self.view.left(name, "the aggregator lost the router")

    # -- meta events ------------------------------------------------------------------------------
    def _registered(self, session_id: int, registration: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        node = node_of(str(registration.get("uri", "")), NODE_MARK)
        session = self.link.session
        if node is not None and session is not None:
            self._node_seen(session, node, session_id)

    def _session_left(self, session_id: int, *args: Any, **kwargs: Any) -> None:
        node = self._sessions.pop(session_id, None)
        if node is not None:
            log.info("fleet: node %s left the router", node)
            task = self._fetching.pop(node, None)
            if task is not None:
                task.cancel()
            self.view.left(node, "left the router")

    def _node_seen(self, session: ApplicationSession, node: str, session_id: int | None) -> None:
        if session_id is not None:
            for sid in [s for s, n in self._sessions.items() if n == node and s != session_id]:
                del self._sessions[sid]  # an older session of the same node (it rejoined)
            self._sessions[session_id] = node
        self._fetch(session, node, session_id)

    def _fetch(self, session: ApplicationSession, node: str, session_id: int | None) -> None:
        """(Re)read a node's describe and status, once at a time per node."""
        running = self._fetching.get(node)
        if running is not None and not running.done():
            return
        task = asyncio.get_running_loop().create_task(self._read_node(session, node, session_id))
        self._fetching[node] = task

    async def _read_node(self, session: ApplicationSession, node: str, session_id: int | None) -> None:
        prefix = f"pictl.{node}."
        try:
            async with asyncio.timeout(FETCH_TIMEOUT_S):
                described = await session.call(prefix + "system.describe")
                status = await session.call(prefix + "system.status")
        except (ApplicationError, TimeoutError) as exc:
            log.warning("fleet: cannot read node %s: %s", node, exc)
            return
        except Exception as exc:  # the link went down meanwhile: the next join reads it again
            log.info("fleet: reading node %s interrupted: %s", node, exc)
            return
        if session_id is not None and self._sessions.get(session_id) != node:
            return  # it left while we read
        self.view.joined(node, session_id, described, status)

    # -- node events ------------------------------------------------------------------------------
    def _node_event(self, event: Any, *args: Any, details: Any = None, **kwargs: Any) -> None:
        topic = str(getattr(details, "topic", "") or "")
        rest = topic[len("pictl."):]
        node, _, _ = rest.partition(".")
        if node in ("fleet", "error") or node not in self.view.nodes or not isinstance(event, dict):
            return
        if not self.view.event(node, event):
            session = self.link.session
            view = self.view.nodes[node]
            if session is not None:
                log.info("fleet: events of %s skipped a seq: reading its status again", node)
                self._fetch(session, node, view.session)

    def _changed(self, node: str, what: str, data: dict[str, Any]) -> None:
        session = self.link.session
        if session is None or not session.is_attached():
            return
        try:
            session.publish(FLEET_STATUS, self.view.snapshot())
        except Exception as exc:
            log.debug("fleet: status not published: %s", exc)

    # -- calls through the router -----------------------------------------------------------------
    async def call(self, node: str, method: str, params: dict[str, Any], timeout: float) -> Any:
        """Call ``pictl.<node>.<method>``; a WAMP error comes back as the RpcError it stands for."""
        session = self.link.session
        view = self.view.nodes.get(node)
        if session is None or not session.is_attached() or view is None or not view.online:
            raise node_offline(node, view)
        try:
            async with asyncio.timeout(timeout):
                return await session.call(f"pictl.{node}.{method}", **params)
        except ApplicationError as exc:
            raise rpc_error(exc, node, method) from None
        except TimeoutError:
            raise errors.NotConfirmed(
                f"no answer from node {node} within {timeout:.0f} s", expected=method.rpartition(".")[2],
                observed="unknown", recovery=f"the call was abandoned: check {node}'s device") from None


def node_offline(node: str, view: NodeView | None) -> errors.Unavailable:
    since = None if view is None or view.since is None else iso(view.since)
    return errors.Unavailable(f"node {node} is offline", node=node, since=since)


def rpc_error(exc: ApplicationError, node: str, method: str) -> errors.RpcError:
    """The JSON-RPC error a WAMP error stands for; the router's own errors are told apart."""
    kwargs = exc.kwargs or {}
    if exc.error.startswith("pictl.error."):
        code = kwargs.get("code")
        cls = next((c for c in errors.RpcError.__subclasses__() if c.code == code), errors.InternalError)
        message = str(exc.args[0]) if exc.args else cls.name
        data = kwargs.get("data")
        return cls(message, **(data if isinstance(data, dict) else {}))
    if exc.error == "wamp.error.canceled":
        # The node went away while acting (killed, or its link dropped): nobody can say whether
        # the device moved. Not "unavailable" (that promises nothing was done).
        return errors.NotConfirmed(f"node {node} left the router during {method}", expected=method.rpartition(".")[2],
                                   observed="unknown", recovery=f"outcome unknown: re-read {node}'s state")
    if exc.error in ("wamp.error.no_such_procedure", "wamp.error.no_such_registration"):
        return errors.Unavailable(f"node {node} does not offer {method} now", node=node, since=None)
    log.warning("fleet: %s on %s: %s", exc.error, node, exc)
    return errors.InternalError()


class FleetPanel:
    """The fleet's wall panel and JSON-RPC front door: devices named ``<node>.<device>``."""

    def __init__(self, aggregator: Aggregator, config: Config, *, host: str | None = None,
                 port: int | None = None) -> None:
        self.aggregator = aggregator
        self.view = aggregator.view
        self.metrics = Metrics()
        self.events = EventBus(buffer_size=config.events.buffer, max_pending_bytes=config.events.max_pending_bytes,
                               on_cutoff=self.metrics.event_cutoffs.inc)
        self.audit = AuditTrail(config.audit.file, max_bytes=config.audit.max_bytes, backups=config.audit.backups,
                                fsync=config.audit.fsync)
        self.dispatcher = Dispatcher({}, Authenticator(config.tokens, config.roles, config.lockout),
                                     max_batch=config.server.max_batch, events=self.events, metrics=self.metrics,
                                     audit=self.audit)
        d = self.dispatcher
        d.methods["system.status"] = self._status
        d.methods["system.describe"] = self._describe
        d.methods["fleet.status"] = lambda session, params: self.view.snapshot()
        d.instant.add("fleet.status")
        self.server = Server(
            d, host=host or config.server.host, port=config.server.port if port is None else port,
            max_frame_bytes=config.server.max_frame_bytes, allowed_origins=config.server.allowed_origins,
            metrics_tokens=config.metrics.tokens, auth_timeout=config.server.auth_timeout,
            max_connections=config.server.max_connections,
            max_connections_per_address=config.server.max_connections_per_address)
        self._methods: set[str] = set()  # the forwarded methods currently offered
        connected = Gauge("pictl_wamp_connected", "1 while the aggregator is joined to the WAMP router",
                          registry=self.metrics.registry)
        aggregator.link_listeners.append(lambda up: connected.set(1 if up else 0))
        self.view.listeners.append(self._changed)

    @property
    def url(self) -> str:
        return self.server.url

    async def start(self) -> None:
        await self.server.start()
        log.info("fleet panel on http://%s:%d/", self.server.host, self.server.port)

    async def stop(self) -> None:
        self.server.stop_accepting()
        self.dispatcher.draining = True
        await self.server.drain(5.0)
        await self.server.close()
        self.audit.close()

    # -- the device table -------------------------------------------------------------------------
    def _sync_methods(self) -> bool:
        """Offer ``<node>.<device>.<action>`` and ``.state`` for every known device; True on change."""
        wanted: dict[str, Any] = {}
        for node, view in self.view.nodes.items():
            for device, described in view.described.items():
                name = f"{node}.{device}"
                wanted[f"{name}.state"] = self._state_handler(node, device)
                for action in (described.get("actions") or {}):
                    wanted[f"{name}.{action}"] = self._action_handler(node, device, action, described)
        d = self.dispatcher
        changed = set(wanted) != self._methods
        for method in self._methods - set(wanted):
            d.methods.pop(method, None)
            d.instant.discard(method)
        for method, handler in wanted.items():
            d.methods[method] = handler
            if method.endswith(".state"):
                d.instant.add(method)
        self._methods = set(wanted)
        return changed

    def _state_handler(self, node: str, device: str) -> Callable[[Session, dict[str, Any]], Any]:
        def state(session: Session, params: dict[str, Any]) -> Any:
            if params:
                raise errors.InvalidParams(f"{node}.{device}.state takes no parameters")
            return self.view.node(node).devices.get(device, {}).get("state")

        return state

    def _action_handler(self, node: str, device: str, action: str,
                        described: dict[str, Any]) -> Callable[[Session, dict[str, Any]], Any]:
        method = f"{node}.{device}.{action}"
        cap = described.get("max_timeout")
        limit = float(cap) if isinstance(cap, (int, float)) else DEFAULT_CALL_TIMEOUT_S

        async def run(session: Session, params: dict[str, Any]) -> Any:
            started = time.monotonic()
            asked = params.get("timeout")
            timeout = min(float(asked), limit) if isinstance(asked, (int, float)) and asked > 0 else limit
            try:
                result = await self.aggregator.call(node, f"{device}.{action}", params, 2 * timeout + CALL_SLACK_S)
            except errors.RpcError as err:
                self.audit.record(session, method, params, err.name, (time.monotonic() - started) * 1000,
                                  error=err.to_wire())
                raise
            self.audit.record(session, method, params, "ok", (time.monotonic() - started) * 1000,
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
        if params:
            raise errors.InvalidParams("system.status takes no parameters")
        return {"devices": self._devices(), "nodes": self.view.snapshot()["nodes"],
                "uptime_s": round(time.monotonic() - self.dispatcher.started, 3), "version": __version__,
                "seq": self.events.seq, "epoch": self.events.epoch}

    def _describe(self, session: Session, params: dict[str, Any]) -> Any:
        if params:
            raise errors.InvalidParams("system.describe takes no parameters")
        devices = {}
        for node, view in sorted(self.view.nodes.items()):
            for device, described in view.described.items():
                devices[f"{node}.{device}"] = {**described, "node": node, "label": device}
        role = session.role
        methods = sorted(m for m in self.dispatcher.methods
                         if role is not None and self.dispatcher.auth.may_call(role, m) and not m.startswith("sim."))
        return {"devices": devices, "methods": methods, "version": __version__,
                "nodes": {n: {"online": v.online} for n, v in sorted(self.view.nodes.items())}}

    # -- fleet changes become panel events --------------------------------------------------------
    def _changed(self, node: str, what: str, data: dict[str, Any]) -> None:
        view = self.view.nodes[node]
        if what == "event":
            topic = str(data.get("topic", ""))
            body = data.get("data") if isinstance(data.get("data"), dict) else {}
            assert isinstance(body, dict)
            if topic == "system.status":
                self.events.publish("system.status", {**body, "device": f"{node}.{body.get('device')}"})
            else:
                self.events.publish(f"{node}.{topic}", body)
            return
        if self._sync_methods():
            self.events.publish("system.describe", {"node": node, "online": view.online})
        self.events.publish("fleet.node", {"node": node, "online": view.online,
                                           "since": None if view.since is None else iso(view.since)})
        for device, status in self._devices().items():
            if status["node"] == node:
                self.events.publish("system.status", {"device": device, "online": status["online"],
                                                      **({"since": status.get("since"),
                                                          "reason": status.get("reason")}
                                                         if not status["online"] else {})})
                if view.online:
                    self.events.publish(f"{device}.state", {**(status.get("state") or {}), "cause": "resync"})


async def serve(url: str, realm: str, config: Config | None, *, host: str | None = None, port: int | None = None,
                authid: str | None = None, ticket: str | None = None) -> None:
    """``pictl aggregate``: run the aggregator (and the panel when *config* gives it tokens) until
    SIGTERM or SIGINT."""
    aggregator = Aggregator(url, realm, authid=authid, ticket=ticket)
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
