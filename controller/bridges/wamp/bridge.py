"""The WAMP front door: this daemon as a node on a router such as Crossbar.io (README: "A building of Pis").

A peer of the WebSocket server over the same dispatcher: a call to ``pictl.<node>.<method>``
goes through the same role check, rate limit, parameter check, device queue, confirmation, metrics
and audit as a JSON-RPC call, with the ``[wamp] role``. Every method that role may call is
registered (``session.*`` and ``events.*`` excepted: WAMP has its own sessions and pub/sub); its
params arrive as keyword arguments and its result is the JSON-RPC result object. A JSON-RPC error
becomes ``ApplicationError("pictl.error.<name>", message, code=..., data=...)``. Every event is
published to ``pictl.<node>.<topic>`` with the event object as the only positional argument.

The session rejoins after a router restart or a network loss (autobahn's reconnect, with a capped
backoff, and a WebSocket ping so a dead link is noticed) and registers again. Each call runs in a
task owned here, awaited through a shield: a caller that vanishes (the router cancels the
invocation) does not cut an action short; it finishes, is audited, and its state is published.

Only imported when ``[wamp]`` is configured: autobahn is the optional ``pictl[wamp]`` extra.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import txaio

txaio.use_asyncio()  # before autobahn picks a framework

from autobahn.asyncio.component import Component  # noqa: E402
from autobahn.asyncio.wamp import ApplicationSession  # noqa: E402
from autobahn.wamp.exception import ApplicationError  # noqa: E402
from autobahn.wamp.request import Registration  # noqa: E402
from autobahn.wamp.types import CallDetails, RegisterOptions  # noqa: E402
from prometheus_client import Gauge  # noqa: E402

from controller.bridges.wamp.link import Link, component  # noqa: E402
from controller.rpc.dispatch import Answer, request, settled  # noqa: E402
from controller.runtime.context import Context  # noqa: E402
from controller.security.auth import Session  # noqa: E402
from controller.wire.protocol import ERROR_NAMES, INTERNAL_ERROR, INVALID_PARAMS  # noqa: E402
from controller.wire.throttle import ThrottledLog  # noqa: E402

log = logging.getLogger(__name__)

NOT_OVER_WAMP = ("session.", "events.")  # WAMP brings its own authentication and pub/sub
DETAILS_ARG = "wamp_details"  # the keyword autobahn fills with the call's details (a caller cannot set it)
MAX_CALLER_SESSIONS = 256  # rate-limit buckets kept, one per disclosed caller


def error_uri(name: str) -> str:
    return f"pictl.error.{name}"


def application_error(error: dict[str, Any]) -> ApplicationError:
    """A JSON-RPC error object as the WAMP error a caller receives."""
    code = error.get("code", INTERNAL_ERROR)
    name = ERROR_NAMES.get(code, ERROR_NAMES[INTERNAL_ERROR])
    return ApplicationError(error_uri(name), error.get("message", name), code=code, data=error.get("data"))


class WampBridge:
    """This daemon's presence on the router: its procedures and its events."""

    def __init__(self, ctx: Context) -> None:
        assert ctx.config.wamp is not None
        self.ctx = ctx
        self.config = config = ctx.config.wamp
        self.dispatcher = ctx.dispatcher
        self.role = ctx.auth.roles[config.role]  # the pictl role applied to every WAMP call
        self.connected = Gauge("pictl_wamp_connected", "1 while joined to the WAMP router",
                               registry=ctx.metrics.registry)
        self.tasks: set[asyncio.Task[Answer]] = set()  # calls in progress, owned here
        self._calls: set[Session] = set()  # the sessions of those calls: marked gone when the link drops
        # Callers that leave mid-call, as often as they like: one line per reason per 10 s, with the count.
        self.orphans = ThrottledLog(log, "{detail}", "WAMP: {count} more call(s) ({reason}) in the last "
                                    "{window:.0f} s; latest {latest}", level=logging.INFO)
        self._sessions: OrderedDict[int | None, Session] = OrderedDict()  # per disclosed caller
        self._registrations: dict[str, Registration] = {}  # uri -> registration, this session's
        self._registering = asyncio.Lock()
        self.ready = asyncio.Event()  # set while joined with every procedure registered
        self.refusals = 0  # joins whose registrations the router refused (the node name is taken)
        self.link = Link(f"wamp node {config.node}", self._component, self._register_all, self._lost,
                         config.max_retry_delay)
        self._untap = ctx.events.tap(self._publish)

    def _component(self) -> Component:
        c = self.config
        return component(c.url, c.realm, authid=c.authid, ticket=c.ticket, max_retry_delay=c.max_retry_delay)

    def start(self) -> None:
        """Start joining (in the background: the daemon serves whether or not the router is up)."""
        log.info("WAMP: joining %s realm %s as node %s", self.config.url, self.config.realm, self.config.node)
        self.link.start()

    # -- procedures -------------------------------------------------------------------------------
    def methods(self) -> list[str]:
        """Every method the WAMP role may call, as registered."""
        return [m for m in self.dispatcher.methods_for(self.role) if not m.startswith(NOT_OVER_WAMP)]

    async def _register_all(self, session: ApplicationSession) -> None:
        self._registrations.clear()  # a new session: the router forgot the old ones
        try:
            await self._sync(session)
        except ApplicationError as exc:
            self.refusals += 1
            if exc.error == "wamp.error.procedure_already_exists":
                raise RuntimeError(f"node name {self.config.node!r} is taken on the router by another session "
                                   "(another Pi with the same [wamp] node, or our own previous session "
                                   "the router has not dropped yet)") from None
            raise RuntimeError(f"registering refused: {exc.error}") from None
        self.connected.set(1)
        self.ready.set()
        log.info("WAMP: joined realm %s as node %s: %d procedures under %s", self.config.realm,
                 self.config.node, len(self._registrations), self.config.prefix)

    async def refresh(self) -> None:
        """After a config reload: the role may have changed, devices come and go."""
        self.role = self.ctx.auth.roles.get(self.config.role, self.role)
        self._sessions.clear()  # new buckets for the new role
        session = self.link.session
        if session is not None and session.is_attached():
            await self._sync(session)

    async def _sync(self, session: ApplicationSession) -> None:
        """Register what is callable and not yet registered; withdraw what no longer is."""
        async with self._registering:
            wanted = {self.config.prefix + m: m for m in self.methods()}
            for uri in [u for u in self._registrations if u not in wanted]:
                registration = self._registrations.pop(uri)
                if registration.active:
                    await registration.unregister()
            for uri, method in wanted.items():
                if uri not in self._registrations:
                    self._registrations[uri] = await session.register(
                        self._endpoint(method), uri, options=RegisterOptions(details_arg=DETAILS_ARG))

    def _lost(self) -> None:
        for session in self._calls:  # no caller can hear an answer any more: what waits is dropped
            session.closed = True
        self.ready.clear()
        self.connected.set(0)
        self._registrations.clear()
        if not self.link._stopping:
            log.warning("WAMP: left the router; rejoining with backoff (at most %.0f s)",
                        self.config.max_retry_delay)

    def _session(self, details: CallDetails | None) -> Session:
        caller = None if details is None else details.caller  # disclosed by the router, when configured to
        session = self._sessions.get(caller)
        if session is None:
            session = Session.for_service(f"wamp:{self.config.authid or self.config.node}", self.role,
                                          peer=f"wamp:{'?' if caller is None else caller}", address="wamp")
            self._sessions[caller] = session
            if len(self._sessions) > MAX_CALLER_SESSIONS:
                self._sessions.popitem(last=False)
        else:
            self._sessions.move_to_end(caller)
        return session

    def _endpoint(self, method: str) -> Callable[..., Any]:
        def endpoint(*args: Any, **kwargs: Any) -> Any:
            details = kwargs.pop(DETAILS_ARG, None)
            if args:
                raise ApplicationError(error_uri("invalid_params"), "params go as keyword arguments",
                                       code=INVALID_PARAMS, data=None)
            session = self._session(details).for_call()
            answer = self.dispatcher.call(session, request(method, kwargs))
            if not isinstance(answer, Answer):
                return self._wait(method, answer, details, session)  # a coroutine: autobahn awaits it
            return _unwrap(answer.reply)  # ping, state, status: answered here, no task

        return endpoint

    async def call(self, method: str, params: dict[str, Any], details: CallDetails | None = None) -> Any:
        """Run *method* through the dispatcher in a task of our own: the caller may go away."""
        session = self._session(details).for_call()
        return await self._wait(method, settled(self.dispatcher.call(session, request(method, params))), details,
                                session)

    async def _wait(self, method: str, answer: Awaitable[Answer], details: CallDetails | None,
                    session: Session) -> Any:
        """Each call runs under its own copy of the caller's session: a caller that leaves (the router
        cancels the invocation) or a link that drops marks it gone, so a call still waiting for its
        device is dropped; one already running finishes, is audited and published."""
        task = asyncio.ensure_future(answer)
        self.tasks.add(task)
        self._calls.add(session)
        task.add_done_callback(self.tasks.discard)
        task.add_done_callback(lambda _: self._calls.discard(session))
        try:
            reply = (await asyncio.shield(task)).reply
        except asyncio.CancelledError:
            session.closed = True
            caller = "?" if details is None else str(details.caller)
            self.orphans.note("caller_left", caller,
                              f"WAMP caller of {method} went away ({caller}); the call carries on if it has started")
            task.add_done_callback(lambda t: self._log_orphan(method, caller, t))
            raise
        return _unwrap(reply)

    def _log_orphan(self, method: str, caller: str, task: asyncio.Future[Answer]) -> None:
        if task.cancelled():
            return
        if task.exception() is not None:
            outcome = str(task.exception())
        else:
            reply = task.result().reply
            if reply is None:
                self.orphans.note("dropped", caller, f"{method} was dropped unstarted: its WAMP caller left")
                return
            outcome = "ok" if "result" in reply else reply["error"].get("message")
        self.orphans.note("finished", caller, f"{method} finished after its WAMP caller left: {outcome}")

    # -- events -----------------------------------------------------------------------------------
    def _publish(self, event: dict[str, Any]) -> None:
        session = self.link.session
        if session is None or not session.is_attached():
            return  # missed while away: a subscriber resyncs from system.status
        try:
            session.publish(self.config.prefix + event["topic"], event)
        except Exception as exc:  # the link dropped between the check and the send
            log.debug("WAMP: event %s not published: %s", event["topic"], exc)

    # -- shutdown ---------------------------------------------------------------------------------
    async def drain(self, timeout: float) -> bool:
        """Wait for calls in progress; False if some did not finish in time."""
        if not self.tasks:
            return True
        _done, pending = await asyncio.wait(set(self.tasks), timeout=timeout)
        return not pending

    async def stop(self) -> None:
        self._untap()
        self.orphans.close()
        await self.link.stop()
        self.connected.set(0)


def _unwrap(reply: dict[str, Any] | None) -> Any:
    """A JSON-RPC response object as what a WAMP callee returns or raises."""
    assert reply is not None  # a request with an id is always answered
    if "error" in reply:
        raise application_error(reply["error"])
    return reply["result"]


