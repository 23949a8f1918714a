"""One listener, several routes: the JSON-RPC WebSocket at /ws, and plain HTTP beside it
(/healthz, /metrics, and the wall panel's files at / — see :mod:`controller.http.static`).

The listener is a function of a :class:`controller.runtime.context.Context`: every setting comes
from its ``[server]`` (TLS, ``allowed_hosts``, ``trusted_proxies``, origins, limits) and
``[metrics]`` tables, every call goes to its dispatcher. The node daemon and the fleet panel serve
through this same class, so they cannot differ in what they honour.

Every request is first judged by :mod:`controller.http.guard` (duplicated
headers 400, unknown ``Host`` 421, malformed ``Authorization`` 401; the client
address behind a trusted proxy). The handshake is then checked in
``process_request`` before any upgrade: the ``Origin`` (403), the lockout (429),
the connection caps (503, 429), then an ``Authorization: Bearer`` header if sent
(401). Every refusal is counted in ``pictl_ws_refused_total{reason}`` and
logged at most once per reason per 10 s. Each text frame that must wait is
handled in a task owned by the server, not by the connection, so a client that
goes away does not abort its action; but nothing of a connection that has ended
or is ending starts any more (its session is :attr:`Session.gone`): neither the
frames websockets still hands over from its buffer, nor an action waiting in a
device's queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import weakref
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus
from typing import Any, ClassVar

from websockets.asyncio.server import Server as WsServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State

from controller.http.admission import Admission
from controller.http.guard import Front, Guard, Refusal
from controller.http.peer import parse_address
from controller.http.refusals import RefusalLog
from controller.http.static import StaticFiles
from controller.rpc.dispatch import MAX_INFLIGHT, Answer, binary_frame_error
from controller.runtime.context import Context
from controller.security.auth import Session
from controller.settings.sections import ServerConfig
from controller.wire.errors import DISCONNECTED
from controller.wire.jsonrpc import decode
from controller.wire.owned import OwnedTasks
from controller.wire.throttle import ThrottledLog
from drivers.base import Listeners

log = logging.getLogger(__name__)

AUTH_GRACE_S = 10.0  # a connection silent about auth for this long is closed
CLOSE_POLICY = 1008  # WebSocket close code: policy violation


class _RedactSecrets(logging.Filter):
    """websockets logs headers and frame contents at DEBUG: never let a token through
    (an Authorization header, or a session.auth frame)."""

    SENSITIVE = frozenset({"authorization", "cookie", "sec-websocket-protocol"})

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 2 and str(args[0]).lower() in self.SENSITIVE:
            record.args = (args[0], "[redacted]")
        elif isinstance(args, tuple) and len(args) == 1 and isinstance(args[0], Frame) \
                and args[0].opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
            record.args = (f"{args[0].opcode.name} [{len(args[0].data)} bytes, contents withheld]",)
        return True


ws_log = logging.getLogger("websockets.server.pictl")  # the library's own messages, through the filter
ws_log.addFilter(_RedactSecrets())


def _response(status: HTTPStatus, body: bytes, content_type: str, extra: Sequence[tuple[str, str]] = ()) -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))),
                       ("Cache-Control", "no-store"), *extra])
    return Response(status.value, status.phrase, headers, body)


def json_response(status: HTTPStatus, obj: Any, extra: Sequence[tuple[str, str]] = ()) -> Response:
    return _response(status, json.dumps(obj).encode(), "application/json", extra)


def tls_context(files: tuple[str, str] | None) -> ssl.SSLContext | None:
    """A server TLS context from (certificate, key) files, TLS 1.2 at least."""
    if files is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(*files)
    return context


def _open(ws: ServerConnection | None) -> bool:
    """Whether a connection can still carry a reply: OPEN, and its transport not closing."""
    return ws is not None and ws.protocol.state is State.OPEN and not ws.transport.is_closing()


class Connection(ServerConnection):
    """A WebSocket connection of ours: websockets' own, with its session as typed state, counted by
    its listener's :class:`Admission` from accept to close."""

    session: Session | None = None  # set by the handshake check once the connection is admitted
    gate: ClassVar[Admission | None] = None  # the listener's count (each listener serves a subclass)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.gate is not None:
            self.gate.opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.gate is not None:
            self.gate.closed(self)
        super().connection_lost(exc)


class HttpServer:
    """One listener: the JSON-RPC WebSocket, /healthz, /metrics and the wall panel, over a context."""

    def __init__(self, ctx: Context, *, host: str | None = None, port: int | None = None,
                 panel: StaticFiles | None = None) -> None:
        server = ctx.config.server
        self.ctx = ctx
        self.dispatcher = ctx.dispatcher
        self.panel = panel if panel is not None else StaticFiles()  # the wall panel's files, at GET /
        self.host = host or server.host
        self.port = server.port if port is None else port  # the bound port once started (port 0 in tests)
        self.max_frame_bytes = server.max_frame_bytes  # needs a restart to change (a reload says so)
        self.tls = tls_context(server.tls)  # an ssl.SSLContext for wss://, or None
        self.guard = Guard(tls=self.tls is not None)
        self.ws_refusals = RefusalLog(ctx.metrics.ws_refused, "handshake")
        self.http_refusals = RefusalLog(ctx.metrics.http_refused, "request")
        self.closings = ThrottledLog(log, "closing the connection of {peer} ({reason}): {detail}",
                                     "closed {count} more connection(s) ({reason}) in the last {window:.0f} s; "
                                     "latest {latest}", level=logging.INFO)
        self.allowed_origins: frozenset[str] = frozenset()  # browser origins admitted besides our own
        self.metrics_tokens: frozenset[str] = frozenset()  # token names that may scrape; empty: open
        self.auth_timeout = server.auth_timeout  # unauthenticated connections are closed after this long
        self.max_connections = server.max_connections
        self.max_per_address = server.max_connections_per_address
        self.apply(server)
        self.per_address: dict[str, int] = {}  # open (or opening) WebSocket connections by address
        self.handshake_timeout = server.handshake_timeout
        self.admission = Admission(self.ws_refusals, self._trusted, max_connections=self.max_connections,
                                   max_per_address=self.max_per_address, handshake_timeout=self.handshake_timeout)
        self.tasks = OwnedTasks("frame")  # frames being answered, owned here: a client that leaves aborts none
        self.open_connections = 0  # WebSocket connections past the handshake
        self._connections_changed = Listeners[[]]("connection count")
        self._ws: WsServer | None = None

    def apply(self, server: ServerConfig) -> None:
        """The [server] settings a reload applies at once: origins, trusted proxies, host names
        (and [metrics] scrape tokens)."""
        self.allowed_origins = frozenset(o.lower().rstrip("/") for o in server.allowed_origins)
        self.guard.configure(server.trusted_proxies, server.allowed_hosts)
        self.metrics_tokens = frozenset(self.ctx.config.metrics.tokens)

    def on_connections(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call *listener* whenever :attr:`open_connections` changes; returns its unsubscribe."""
        return self._connections_changed.add(listener)

    async def close_sessions(self, stale: Callable[[Session], bool], code: int, reason: str) -> int:
        """Close every open connection whose session *stale* picks (a revoked token); returns how many."""
        if self._ws is None:
            return 0
        doomed = [ws for ws in self._ws.connections
                  if isinstance(ws, Connection) and ws.session is not None and stale(ws.session)]
        await asyncio.gather(*(ws.close(code, reason) for ws in doomed))
        return len(doomed)

    @property
    def url(self) -> str:
        scheme = "wss" if self.tls else "ws"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}/ws"

    @property
    def connections(self) -> list[Connection]:
        """The open WebSocket connections."""
        return [ws for ws in self._ws.connections if isinstance(ws, Connection)] if self._ws is not None else []

    def _trusted(self, address: str) -> bool:
        return self.guard.proxies.trusts(parse_address(address))

    async def start(self) -> None:
        self.admission.start()
        self._ws = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._process_request,
            create_connection=type("Connection", (Connection,), {"gate": self.admission}),
            open_timeout=self.handshake_timeout + 1.0,  # ours (Admission) ends a slow one first, and counts it
            compression=None,  # no permessage-deflate: a compression bomb costs memory
            max_size=self.max_frame_bytes,  # larger frames close with 1009
            ssl=self.tls,
            server_header=None,
            logger=ws_log,
        )
        sock = next(iter(self._ws.sockets))
        self.port = sock.getsockname()[1]

    # -- handshake --------------------------------------------------------------------------------
    def _refuse(self, front: Front | None, connection: ServerConnection, route: str, reason: str, detail: str,
                status: HTTPStatus, message: str, extra: list[tuple[str, str]] | None = None) -> Response:
        """Count, log (throttled) and answer one refusal."""
        peer = front.client.peer if front is not None else self._peer(connection)
        (self.ws_refusals if route == "/ws" else self.http_refusals).refused(reason, peer, detail)
        return json_response(status, {"error": message}, extra or [])

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        try:
            return await self._route(connection, request)
        except (LookupError, ValueError, UnicodeError) as exc:  # a header read the guard did not foresee
            log.error("request from %s: %s while reading it; answered 400", self._peer(connection),
                      type(exc).__name__)
            return json_response(HTTPStatus.BAD_REQUEST, {"error": "bad request"})

    async def _route(self, connection: ServerConnection, request: Request) -> Response | None:
        front = self.guard.inspect(connection.remote_address, request)
        if isinstance(front, Refusal):
            route = request.path.partition("?")[0]
            return self._refuse(None, connection, route, front.reason, front.message, front.status, front.message,
                                list(front.headers))
        if front.route == "/healthz":
            return json_response(HTTPStatus.OK, self.health())
        if front.route == "/metrics":
            return await self._metrics(front, connection)
        if front.route != "/ws":
            page = self.panel.response(request)
            return page if page is not None else json_response(HTTPStatus.NOT_FOUND, {"error": "not found"})
        return await self._handshake(front, connection)

    async def _handshake(self, front: Front, connection: ServerConnection) -> Response | None:
        if front.origin is not None and front.origin != front.own_origin and front.origin not in self.allowed_origins:
            return self._refuse(front, connection, "/ws", "origin", "origin not allowed", HTTPStatus.FORBIDDEN,
                                "origin not allowed")
        client = front.client
        address = client.address
        session = Session(peer=client.peer, address=address, via=client.via)
        auth = self.ctx.auth
        locked = auth.locked_for(address)
        if locked:
            self.ctx.metrics.auth_failures.inc()
            return self._locked_out(front, connection, "/ws", locked)
        if sum(self.per_address.values()) >= self.max_connections:
            return self._refuse(front, connection, "/ws", "too_many_connections", "too many connections",
                                HTTPStatus.SERVICE_UNAVAILABLE, "too many connections", [("Retry-After", "5")])
        if self.per_address.get(address, 0) >= self.max_per_address:
            return self._refuse(front, connection, "/ws", "too_many_from_address",
                                "too many connections from this address", HTTPStatus.TOO_MANY_REQUESTS,
                                "too many connections from this address", [("Retry-After", "5")])
        if front.secret is not None:
            verdict = await auth.login(session, front.secret)
            if verdict.locked_s:
                self.ctx.metrics.auth_failures.inc()
                return self._locked_out(front, connection, "/ws", verdict.locked_s)
            if not verdict.ok:
                self.ctx.metrics.auth_failures.inc()
                return self._refuse(front, connection, "/ws", "unauthorized", "bad bearer token",
                                    HTTPStatus.UNAUTHORIZED, "invalid token",
                                    [("WWW-Authenticate", 'Bearer realm="pictl"')])
        self._count_connection(connection, address)
        assert isinstance(connection, Connection)
        connection.session = session
        return None

    def _locked_out(self, front: Front, connection: ServerConnection, route: str, locked: float) -> Response:
        return self._refuse(front, connection, route, "locked_out", "address locked out after failed "
                            "authentications", HTTPStatus.TOO_MANY_REQUESTS, "too many failed authentications",
                            [("Retry-After", str(int(locked) + 1))])

    def _count_connection(self, connection: ServerConnection, address: str) -> None:
        """Count it from the handshake until it is gone, however it ends."""
        self.per_address[address] = self.per_address.get(address, 0) + 1

        def release(_: object) -> None:
            left = self.per_address.get(address, 1) - 1
            if left > 0:
                self.per_address[address] = left
            else:
                self.per_address.pop(address, None)

        connection.connection_lost_waiter.add_done_callback(release)

    async def _metrics(self, front: Front, connection: ServerConnection) -> Response:
        if self.metrics_tokens:
            challenge = [("WWW-Authenticate", 'Bearer realm="pictl-metrics"')]
            if front.secret is None:  # refused, but no guess: not counted toward a lockout
                self.ctx.metrics.auth_failures.inc()
                return self._refuse(front, connection, "/metrics", "unauthorized", "no scrape token",
                                    HTTPStatus.UNAUTHORIZED, "a scrape token is required", challenge)
            verdict = await self.ctx.auth.attempt(front.client.address, front.secret)
            if verdict.locked_s:
                self.ctx.metrics.auth_failures.inc()
                return self._locked_out(front, connection, "/metrics", verdict.locked_s)
            if verdict.token is None or verdict.token.name not in self.metrics_tokens:
                self.ctx.metrics.auth_failures.inc()
                return self._refuse(front, connection, "/metrics", "unauthorized", "bad scrape token",
                                    HTTPStatus.UNAUTHORIZED, "a scrape token is required", challenge)
        body, content_type = self.ctx.metrics.render(front.accept)
        return _response(HTTPStatus.OK, body, content_type)

    @staticmethod
    def _peer(connection: ServerConnection) -> str:
        address = connection.remote_address
        if isinstance(address, tuple) and len(address) >= 2:
            return f"{address[0]}:{address[1]}"
        return str(address)

    def health(self) -> dict[str, Any]:
        devices = self.ctx.devices.values()
        return {
            "status": "ok" if not self.dispatcher.draining else "stopping",
            "devices": len(devices),
            "online": sum(1 for d in devices if d.online),
        }

    # -- connection -------------------------------------------------------------------------------
    async def _handle(self, ws: ServerConnection) -> None:
        assert isinstance(ws, Connection)  # serve() makes ours (create_connection)
        session = ws.session
        assert session is not None  # the handshake check admitted it with one
        reference = weakref.ref(ws)  # no ws -> session -> ws cycle
        session.events_to = reference  # events.subscribe sends on it
        session.link_open = lambda: _open(reference())
        slots = asyncio.Semaphore(MAX_INFLIGHT)
        guard = None
        self._count_open(+1)
        if not session.authenticated:
            guard = asyncio.get_running_loop().call_later(self.auth_timeout, self._close_if_anonymous, ws, session)
        try:
            async for frame in ws:
                # websockets hands over frames it buffered before the peer went (FIN, RST) or before
                # the daemon closed the connection (1011, 1013): none of them may start anything.
                await slots.acquire()
                if session.gone:
                    slots.release()
                    self.ctx.metrics.rpc_dropped.labels(DISCONNECTED).inc()
                    continue
                if isinstance(frame, str):
                    answer = self.dispatcher.call(session, decode(frame, self.dispatcher.max_batch))
                    if isinstance(answer, Answer):  # answered inline: no task for the common case
                        slots.release()
                        reply = answer.frame()
                        if reply is not None:
                            await ws.send(reply, text=True)
                        continue
                    work: Awaitable[Answer] | None = answer
                else:
                    work = None  # a binary frame: answered with an error
                self.tasks.spawn(self._frame(ws, session, work, slots))
        except ConnectionClosed:
            pass
        finally:
            session.closed = True
            self.ctx.events.drop(ws)
            if guard is not None:
                guard.cancel()
            ws.session = None  # frames still in flight keep the session for as long as they run
            self._count_open(-1)

    def _count_open(self, delta: int) -> None:
        self.open_connections += delta
        self.ctx.metrics.ws_connections.set(self.open_connections)
        self._connections_changed.emit()

    def _close_if_anonymous(self, ws: Connection, session: Session) -> None:
        if not session.authenticated:
            self.closings.note("no_authentication", session.peer, f"no authentication within {self.auth_timeout:g} s")
            self.tasks.spawn(ws.close(CLOSE_POLICY, "authentication timeout"))

    async def _frame(self, ws: Connection, session: Session, work: Awaitable[Answer] | None,
                     slots: asyncio.Semaphore) -> None:
        try:
            reply = binary_frame_error() if work is None else (await work).frame()
            if reply is not None and not session.gone:  # nobody to answer: the outcome is in the audit
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(reply, text=True)
        except Exception:
            log.exception("frame handling failed for %s", session.peer)
        finally:
            slots.release()

    # -- shutdown ---------------------------------------------------------------------------------
    def stop_accepting(self) -> None:
        """Close the listening socket; open connections stay until :meth:`close`."""
        if self._ws is not None:
            self._ws.server.close()

    async def drain(self, timeout: float) -> bool:
        """Wait for in-flight frames (their actions) to finish; False if some did not in time."""
        return await self.tasks.wait(timeout)

    async def close(self) -> None:
        self.admission.close()
        self.closings.close()
        self.ws_refusals.close()
        self.http_refusals.close()
        if self._ws is not None:
            self._ws.close(close_connections=True)
            await self._ws.wait_closed()
            self._ws = None
        self.tasks.cancel()
