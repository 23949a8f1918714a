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
import contextlib
import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import txaio

txaio.use_asyncio()  # before autobahn picks a framework



from autobahn.asyncio.component import Component  # noqa: E402
from autobahn.asyncio.wamp import ApplicationSession  # noqa: E402
from autobahn.asyncio.wamp import Session as WampSession  # noqa: E402
from autobahn.wamp.exception import ApplicationError  # noqa: E402
from autobahn.wamp.request import Registration  # noqa: E402
from autobahn.wamp.types import CallDetails, RegisterOptions  # noqa: E402
from prometheus_client import Gauge  # noqa: E402

from controller.rpc.dispatch import Dispatcher, NotNow  # noqa: E402
from controller.security.auth import RateBucket, Session  # noqa: E402
from controller.security.policy import Role, Token  # noqa: E402
from controller.security.secrets import SecretHash  # noqa: E402
from controller.settings.wamp import WampConfig  # noqa: E402
from controller.wire.protocol import ERROR_NAMES, INTERNAL_ERROR, INVALID_PARAMS  # noqa: E402

log = logging.getLogger(__name__)
if logging.getLogger("autobahn").level == logging.NOTSET:
    # autobahn narrates every connection attempt at WARNING; the link's own lines say what matters.
    logging.getLogger("autobahn").setLevel(logging.ERROR)

NOT_OVER_WAMP = ("session.", "events.")  # WAMP brings its own authentication and pub/sub
DETAILS_ARG = "wamp_details"  # the keyword autobahn fills with the call's details (a caller cannot set it)
MAX_CALLER_SESSIONS = 256  # rate-limit buckets kept, one per disclosed caller
INITIAL_RETRY_DELAY = 0.5  # seconds before the first rejoin; grows x1.5 up to [wamp] max_retry_delay
PING_INTERVAL, PING_TIMEOUT = 10.0, 5.0  # a router that stops answering pings is gone: rejoin


def error_uri(name: str) -> str:
    return f"pictl.error.{name}"


def application_error(error: dict[str, Any]) -> ApplicationError:
    """A JSON-RPC error object as the WAMP error a caller receives."""
    code = error.get("code", INTERNAL_ERROR)
    name = ERROR_NAMES.get(code, ERROR_NAMES[INTERNAL_ERROR])
    return ApplicationError(error_uri(name), error.get("message", name), code=code, data=error.get("data"))


def wamp_transport(url: str, max_retry_delay: float) -> dict[str, Any]:
    """autobahn's transport settings: capped backoff, and pings that notice a dead link."""
    return {
        "type": "websocket", "url": url, "max_retries": -1,
        "initial_retry_delay": INITIAL_RETRY_DELAY, "max_retry_delay": max_retry_delay,
        "retry_delay_growth": 1.5, "retry_delay_jitter": 0.1,
        "options": {"auto_ping_interval": PING_INTERVAL, "auto_ping_timeout": PING_TIMEOUT},
    }


class QuietSession(WampSession):
    """An ApplicationError raised on purpose (a jammed door) is an answer, and a cancelled wait (the
    caller left; the action carries on) is expected: neither is a fault to log."""

    def onUserError(self, fail: Any, msg: str) -> None:
        if isinstance(getattr(fail, "value", None), (ApplicationError, asyncio.CancelledError)):
            return
        super().onUserError(fail, msg)


def component(url: str, realm: str, *, authid: str | None = None, ticket: str | None = None,
              max_retry_delay: float = 10.0) -> Component:
    """An autobahn Component for *realm* at *url* (WAMP-Ticket when *authid* is given), on the running loop."""
    # txaio keeps one global loop: point it at ours (tests and benchmarks run one loop after another).
    txaio.config.loop = asyncio.get_running_loop()  # type: ignore[attr-defined]
    authentication = {} if authid is None else {"ticket": {"authid": authid, "ticket": ticket}}
    return Component(transports=[wamp_transport(url, max_retry_delay)], realm=realm,
                     authentication=authentication, session_factory=QuietSession)


class Link:
    """A Component kept running: autobahn rejoins after a loss; should the component ever stop by
    itself (a router closing cleanly ends it), it is started again after a pause."""

    def __init__(self, name: str, make: Callable[[], Component], on_join: Callable[[ApplicationSession], Any],
                 on_leave: Callable[[], None], retry_delay: float) -> None:
        self.name = name
        self._make = make
        self._on_join = on_join
        self._on_leave = on_leave
        self._retry_delay = retry_delay
        self.session: ApplicationSession | None = None  # while joined
        self.component: Component | None = None
        self._runner: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._runner = asyncio.get_running_loop().create_task(self._run(), name=f"wamp link {self.name}")

    async def _run(self) -> None:
        while not self._stopping:
            self.component = comp = self._make()
            comp.on("join", self._joined)
            comp.on("leave", self._left)
            comp.on("disconnect", self._disconnected)
            try:
                await comp.start(asyncio.get_running_loop())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("%s: WAMP link ended: %s", self.name, exc)
            if not self._stopping:
                await asyncio.sleep(self._retry_delay)

    async def _joined(self, session: ApplicationSession, details: Any) -> None:
        self.session = session
        try:
            await self._on_join(session)
        except Exception as exc:
            # Registration refused (the node name is taken) or the link dropped while joining:
            # leave, so that autobahn's backoff tries again.
            log.error("%s: %s; leaving the router to try again", self.name, exc)
            if session.is_attached():
                session.leave("pictl.close.rejoin", str(exc))

    def _left(self, session: ApplicationSession, details: Any) -> None:
        if self.session is session:
            self.session = None
            self._on_leave()

    def _disconnected(self, session: ApplicationSession, was_clean: bool) -> None:
        self._left(session, None)

    @property
    def joined(self) -> bool:
        return self.session is not None and self.session.is_attached()

    async def stop(self, timeout: float = 3.0) -> None:
        """Leave the router (goodbye) and stop reconnecting."""
        self._stopping = True
        if self.component is not None:
            try:
                async with asyncio.timeout(timeout):
                    await self.component.stop()
            except Exception as exc:  # a link that is half dead: nothing more to say to it
                log.debug("%s: leaving the router: %s", self.name, exc)
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._runner
        transport = getattr(self.session, "_transport", None)
        if transport is not None:  # the goodbye went unanswered: drop the connection
            transport.close()
        self.session = None


class WampBridge:
    """This daemon's presence on the router: its procedures and its events."""

    def __init__(self, config: WampConfig, dispatcher: Dispatcher, *, roles: dict[str, Role]) -> None:
        self.config = config
        self.dispatcher = dispatcher
        self.role = roles[config.role]  # the pictl role applied to every WAMP call
        self.token = Token(name=f"wamp:{config.authid or config.node}", role=config.role,
                           verifier=SecretHash(1, b"", os.urandom(32)))  # never a login: names audit entries
        self.connected = Gauge("pictl_wamp_connected", "1 while joined to the WAMP router",
                               registry=dispatcher.metrics.registry)
        self.tasks: set[asyncio.Task[dict[str, Any]]] = set()  # calls in progress, owned here
        self._sessions: OrderedDict[int | None, Session] = OrderedDict()  # per disclosed caller
        self._registrations: dict[str, Registration] = {}  # uri -> registration, this session's
        self._registering = asyncio.Lock()
        self.ready = asyncio.Event()  # set while joined with every procedure registered
        self.refusals = 0  # joins whose registrations the router refused (the node name is taken)
        self.link = Link(f"wamp node {config.node}", self._component, self._register_all, self._lost,
                         config.max_retry_delay)
        dispatcher.events.taps.append(self._publish)

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
        return sorted(m for m in self.dispatcher.methods
                      if not m.startswith(NOT_OVER_WAMP) and self._may_call(m))

    def _may_call(self, method: str) -> bool:
        if method.startswith("sim.") and self.role.name != "admin":  # the dispatcher's own rule
            return False
        return self.dispatcher.auth.may_call(self.role, method)

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

    async def refresh(self, roles: dict[str, Role]) -> None:
        """After a config reload: the role may have changed, devices come and go."""
        self.role = roles.get(self.config.role, self.role)
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
            session = Session(peer=f"wamp:{'?' if caller is None else caller}", address="wamp",
                              token=self.token, role=self.role)
            if self.role.rate is not None:
                session.bucket = RateBucket(self.role.rate, self.role.burst or 1)
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
            reply = self.dispatcher.answer_call_now(self._session(details), method, kwargs)
            if isinstance(reply, NotNow):
                return self.call(method, kwargs, details)  # a coroutine: autobahn awaits it
            return _unwrap(reply)  # ping, state, status: answered here, no task

        return endpoint

    async def call(self, method: str, params: dict[str, Any], details: CallDetails | None = None) -> Any:
        """Run *method* through the dispatcher in a task of our own: the caller may go away."""
        session = self._session(details)
        task = asyncio.get_running_loop().create_task(self.dispatcher.answer_call(session, method, params))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        try:
            reply = await asyncio.shield(task)
        except asyncio.CancelledError:
            log.info("WAMP caller of %s went away (%s); the call carries on", method, session.peer)
            task.add_done_callback(lambda t: _log_orphan(method, t))
            raise
        return _unwrap(reply)

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
        if self._publish in self.dispatcher.events.taps:
            self.dispatcher.events.taps.remove(self._publish)
        await self.link.stop()
        self.connected.set(0)


def _unwrap(reply: dict[str, Any]) -> Any:
    """A JSON-RPC response object as what a WAMP callee returns or raises."""
    if "error" in reply:
        raise application_error(reply["error"])
    return reply["result"]


def _log_orphan(method: str, task: asyncio.Task[dict[str, Any]]) -> None:
    if task.cancelled():
        return
    reply = task.result() if task.exception() is None else {"error": {"message": str(task.exception())}}
    outcome = "ok" if "result" in reply else reply["error"].get("message")
    log.info("%s finished after its WAMP caller left: %s", method, outcome)
