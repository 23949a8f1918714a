"""From a decoded request to a reply: the checks every front door shares, and the method table.

Two doors, nothing else: :meth:`Dispatcher.register` puts a handler in the table (and returns the
function that takes it out), :meth:`Dispatcher.call` takes one decoded message from any front door
(a WebSocket frame, an MQTT request, a WAMP call) with the caller's :class:`Session` and gives its
:class:`Answer`. Checks run in the order README's *Errors* gives: authentication, method exists,
role may call it, params, device online; nothing reaches a handler before they pass. Each call is
counted (``pictl_rpc_requests_total``, ``pictl_rpc_duration_seconds``) under a method name from the
table, never a client's string.

A message whose only request is a method registered ``instant`` (it answers without waiting:
ping, state, status) is answered inline: :meth:`call` returns the :class:`Answer` itself, and no
task is made. Anything else returns an awaitable of it, which the front door awaits in a task of
its own (a client that goes away must not cut an action short). A session has at most
:data:`MAX_INFLIGHT` such messages at once; past that it is answered ``-32005`` at once.

A request whose caller has gone before it started (:attr:`Session.gone`: the connection closed,
the broker link dropped, the WAMP caller left) is dropped: no reply, counted as outcome
``dropped`` and in ``pictl_rpc_dropped_total{reason}``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from controller.rpc.metrics import Metrics
from controller.security.auth import Authenticator, Session
from controller.security.policy import Role
from controller.wire import jsonrpc
from controller.wire.errors import (
    Dropped,
    InternalError,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    RateLimited,
    RpcError,
    Unauthorized,
    Unavailable,
    short,
)

log = logging.getLogger(__name__)

Handler = Callable[[Session, dict[str, Any]], Any]  # returns the result, or an awaitable of it
# Messages of one session answered at once: the WebSocket listener stops reading at this many (TCP
# back-pressure); a front door that cannot (an MQTT broker keeps delivering) gets -32005 past it.
MAX_INFLIGHT = 32
ADMIN_ROLE = "admin"  # the role an admin-only method (sim.*) needs, whatever other roles' patterns say


@dataclass(frozen=True, slots=True)
class Method:
    """One entry of the method table."""

    handler: Handler
    instant: bool  # the handler returns its result at once (never an awaitable): answered inline
    open: bool  # callable before authentication (session.auth)
    admin_only: bool  # only the admin role may call it (the simulation's sim.*)


@dataclass(frozen=True, slots=True)
class Answer:
    """The replies to one message, in order (a notification has none)."""

    replies: tuple[dict[str, Any], ...]
    batch: bool  # the message was a batch: the reply is an array

    def frame(self) -> bytes | None:
        """The reply as one text frame (UTF-8), or None when nothing is owed."""
        return jsonrpc.encode_frame(list(self.replies), self.batch)

    @property
    def reply(self) -> dict[str, Any] | None:
        """The one reply of a single request (None for a notification)."""
        return self.replies[0] if self.replies else None


class Dispatcher:
    """The method table and the checks in front of it."""

    def __init__(self, auth: Authenticator, metrics: Metrics, *, max_batch: int = 50) -> None:
        self.auth = auth  # roles, for the role check (tokens are checked by the front doors)
        self.metrics = metrics
        self.max_batch = max_batch  # members accepted in one batch (a reload may change it)
        self.draining = False  # set at shutdown: new calls are refused
        self._table: dict[str, Method] = {}
        self._requests: dict[tuple[str, str], Any] = {}  # (method, outcome) -> its counter, looked up once
        self._durations: dict[str, Any] = {}  # method -> its histogram child

    # -- the table --------------------------------------------------------------------------------
    def register(self, name: str, handler: Handler, *, instant: bool = False, open: bool = False,
                 admin_only: bool = False) -> Callable[[], None]:
        """Offer *name* (replacing any entry of that name); returns the function that withdraws it.

        *instant*: the handler never waits (it returns its result, not an awaitable), so a request
        for it alone is answered inline. *open*: callable before authentication. *admin_only*: only
        the admin role may call it, whatever another role's patterns allow.
        """
        entry = Method(handler, instant, open, admin_only)
        self._table[name] = entry

        def withdraw() -> None:
            if self._table.get(name) is entry:
                del self._table[name]

        return withdraw

    def entry(self, name: str) -> Method | None:
        """The table's entry for *name* (None when it is not offered)."""
        return self._table.get(name)

    def names(self) -> list[str]:
        """Every method offered, sorted."""
        return sorted(self._table)

    def may_call(self, role: Role, name: str) -> bool:
        """Whether *role* may call the registered method *name* (False for an unknown one)."""
        entry = self._table.get(name)
        if entry is None:
            return False
        if entry.admin_only and role.name != ADMIN_ROLE:
            return False
        return entry.open or self.auth.may_call(role, name)

    def methods_for(self, role: Role | None) -> list[str]:
        """Every method *role* may call, sorted (system.describe, the WAMP registrations)."""
        if role is None:
            return []
        return sorted(name for name in self._table if self.may_call(role, name))

    # -- the calls --------------------------------------------------------------------------------
    def call(self, session: Session, message: jsonrpc.Message) -> Answer | Awaitable[Answer]:
        """Answer one decoded message: the :class:`Answer` itself when it could be answered at once
        (invalid, a single instant method, or one past the session's :data:`MAX_INFLIGHT`), else an
        awaitable of it."""
        if len(message.items) == 1:
            item = message.items[0]
            entry = self._table.get(item.method) if isinstance(item, jsonrpc.Request) else None
            if entry is None or entry.instant:  # invalid, unknown (an error now) or instant
                reply = self._answer_now(session, item)
                return Answer(() if reply is None else (reply,), message.batch)
        if session.inflight >= MAX_INFLIGHT:  # a front door that cannot hold back its reader (MQTT)
            limited = RateLimited(f"{MAX_INFLIGHT} requests of this session are in flight: wait for their answers",
                                  retry_after_s=0.5)
            started = time.perf_counter()
            replies = (self._settle(item, started, error=limited) if isinstance(item, jsonrpc.Request)
                       else self._answer_now(session, item) for item in message.items)
            return Answer(tuple(r for r in replies if r is not None), message.batch)
        session.inflight += 1
        return self._answer_later(session, message)

    async def _answer_later(self, session: Session, message: jsonrpc.Message) -> Answer:
        try:
            if len(message.items) == 1:
                reply = await self._answer(session, message.items[0])
                return Answer(() if reply is None else (reply,), message.batch)
            # Batch members run concurrently; the per-device queue keeps same-device members in
            # arrival order because their tasks start in that order. session.auth is refused in a
            # batch: one frame must not carry many guesses.
            replies = await asyncio.gather(*(self._answer(session, item) if not _is_auth(item)
                                             else self._refuse_batched_auth(item) for item in message.items))
            return Answer(tuple(r for r in replies if r is not None), message.batch)
        finally:
            session.inflight -= 1

    async def _refuse_batched_auth(self, item: jsonrpc.Request | jsonrpc.Invalid) -> dict[str, Any] | None:
        assert isinstance(item, jsonrpc.Request)
        error = InvalidRequest("session.auth cannot be part of a batch: send it on its own")
        return self._settle(item, time.perf_counter(), error=error)

    def _answer_now(self, session: Session, item: jsonrpc.Request | jsonrpc.Invalid) -> dict[str, Any] | None:
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
        entry = self._table.get(item.method) if isinstance(item, jsonrpc.Request) else None
        if entry is None or entry.instant:
            return self._answer_now(session, item)
        assert isinstance(item, jsonrpc.Request)
        started = time.perf_counter()
        try:
            handler, params = self._resolve(session, item.method, item.params)
            value = await handler(session, params)
        except Dropped as dropped:  # its caller has gone: counted, never answered
            self._count(item.method, "dropped")
            self.metrics.rpc_dropped.labels(dropped.reason).inc()
            return None
        except Exception as exc:
            return self._settle(item, started, error=exc)
        return self._settle(item, started, value=value)

    def _settle(self, item: jsonrpc.Request, started: float, value: Any = None,
                error: Exception | None = None) -> dict[str, Any] | None:
        """Count the call, and make its reply (None for a notification)."""
        label = item.method if item.method in self._table else "unknown"  # never a client's string
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
        entry = self._table.get(method)
        if not session.authenticated and (entry is None or not entry.open):
            raise Unauthorized("authenticate first: session.auth or an Authorization: Bearer header",
                               method=short(method))
        if session.bucket is not None:
            wait = session.bucket.take()
            if wait:
                raise RateLimited("too many calls: slow down", retry_after_s=round(wait, 3))
        if entry is None:
            raise MethodNotFound(f"no method {short(method)!r}", method=short(method))
        if not entry.open:
            assert session.role is not None
            if not self.may_call(session.role, method):
                raise Unauthorized(f"role {session.role.name!r} may not call {method}", method=method)
        if isinstance(params, list):
            if params:
                raise InvalidParams("params must be an object (named parameters)")
            params = {}
        elif params is None:
            params = {}
        return entry.handler, params


def _is_auth(item: jsonrpc.Request | jsonrpc.Invalid) -> bool:
    return isinstance(item, jsonrpc.Request) and item.method == "session.auth"


def request(method: str, params: dict[str, Any] | None = None) -> jsonrpc.Message:
    """One request as a message, for a front door that receives calls rather than frames (WAMP, an
    MQTT command)."""
    return jsonrpc.Message((jsonrpc.Request(method, params or {}, 0),), batch=False)


async def settled(answer: Answer | Awaitable[Answer]) -> Answer:
    """The answer, awaiting it when :meth:`Dispatcher.call` could not give it at once."""
    return answer if isinstance(answer, Answer) else await answer


def binary_frame_error() -> bytes:
    return jsonrpc.dumps_bytes(jsonrpc.error(None, InvalidRequest("binary frames are not supported: send JSON text")))
