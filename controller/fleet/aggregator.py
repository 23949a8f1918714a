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

The wall panel for the whole fleet is :class:`controller.fleet.panel.FleetPanel`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from autobahn.asyncio.wamp import ApplicationSession
from autobahn.wamp.exception import ApplicationError
from autobahn.wamp.types import SubscribeOptions

from controller.bridges.wamp.link import Link, component
from controller.fleet.view import FleetView, NodeView
from controller.wire import errors
from controller.wire.clock import iso
from drivers.base import Listeners

log = logging.getLogger(__name__)

FLEET_STATUS = "pictl.fleet.status"
NODE_MARK = "system.status"  # the procedure whose registration says "a node is here"
FETCH_TIMEOUT_S = 5.0  # describe/status of a node that just joined
CALL_SLACK_S = 5.0  # a forwarded action may take its timeout twice (queue + confirmation), plus this
DEFAULT_CALL_TIMEOUT_S = 30.0


def node_of(uri: str, suffix: str) -> str | None:
    """``pictl.<node>.<suffix>`` -> node (None for anything else, the fleet's own URIs included)."""
    if not uri.startswith("pictl.") or not uri.endswith("." + suffix):
        return None
    node = uri[len("pictl."):-len(suffix) - 1]
    return node if node and "." not in node and node not in ("fleet", "error") else None


class Aggregator:
    """The fleet view's WAMP side: meta events, node events, ``pictl.fleet.status``."""

    def __init__(self, url: str, realm: str, *, authid: str | None = None, ticket: str | None = None,
                 view: FleetView | None = None, max_retry_delay: float = 10.0) -> None:
        self.url = url
        self.realm = realm
        self.view = view or FleetView()
        self._unview = self.view.on_change(self._changed)
        self._sessions: dict[int, str] = {}  # WAMP session id -> node
        self._fetching: dict[str, asyncio.Task[None]] = {}
        self._link_changed: Listeners[[bool]] = Listeners("fleet router link")  # joined (True) or lost
        self.link = Link("fleet aggregator", lambda: component(url, realm, authid=authid, ticket=ticket,
                                                               max_retry_delay=max_retry_delay),
                         self._joined, self._lost, max_retry_delay)

    def on_link(self, listener: Callable[[bool], None]) -> Callable[[], None]:
        """Call *listener(joined)* when the router is joined (True) or lost; returns its unsubscribe."""
        return self._link_changed.add(listener)

    @property
    def session(self) -> ApplicationSession | None:
        return self.link.session

    def start(self) -> None:
        log.info("fleet: joining %s realm %s", self.url, self.realm)
        self.link.start()

    async def stop(self) -> None:
        for task in self._fetching.values():
            task.cancel()
        self._unview()
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
        self._link_changed.emit(True)

    def _lost(self) -> None:
        log.warning("fleet: lost the router; rejoining")
        self._link_changed.emit(False)
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
        if node in ("fleet", "error") or not isinstance(event, dict):
            return
        if not self.view.event(node, event) and node in self.view.nodes:
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


