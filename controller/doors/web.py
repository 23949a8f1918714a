"""One listener, several routes: the JSON-RPC WebSocket at /ws, and plain HTTP beside it
(/healthz, /metrics, and the wall panel's files at / — see :mod:`controller.doors.static`).

The handshake is checked in ``process_request`` before any upgrade: the route,
then the ``Origin`` (403), then an ``Authorization: Bearer`` header if sent
(401). Each text frame is handled in a task owned by the server, not by the
connection, so a client that goes away does not abort its action.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import Server as WsServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response

from controller.doors.static import StaticFiles
from controller.rpc.dispatch import Dispatcher, NotNow, binary_frame_error
from controller.security.auth import Session, bearer
from controller.wire.jsonrpc import Message, decode

log = logging.getLogger(__name__)

AUTH_GRACE_S = 10.0  # a connection silent about auth for this long is closed
MAX_INFLIGHT_PER_CONNECTION = 32  # frames being handled at once; more waits (TCP back-pressure)
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


class Server:
    """The daemon's listener."""

    def __init__(self, dispatcher: Dispatcher, *, host: str, port: int, max_frame_bytes: int,
                 allowed_origins: tuple[str, ...], tls: Any = None, metrics_tokens: tuple[str, ...] = (),
                 auth_timeout: float = AUTH_GRACE_S, max_connections: int = 200,
                 max_connections_per_address: int = 20, panel: StaticFiles | None = None) -> None:
        self.dispatcher = dispatcher
        self.panel = panel if panel is not None else StaticFiles()  # the wall panel's files, at GET /
        self.host = host
        self.port = port  # replaced by the bound port once started (port 0 in tests)
        self.max_frame_bytes = max_frame_bytes
        self.allowed_origins: frozenset[str] = frozenset()
        self.set_allowed_origins(allowed_origins)
        self.tls = tls  # an ssl.SSLContext for wss://, or None
        self.metrics_tokens = frozenset(metrics_tokens)  # token names that may scrape; empty: open
        self.auth_timeout = auth_timeout  # unauthenticated connections are closed after this long
        self.max_connections = max_connections
        self.max_per_address = max_connections_per_address
        self.per_address: dict[str, int] = {}  # open (or opening) WebSocket connections by address
        self.tasks: set[asyncio.Task[None]] = set()  # frame handlers, owned here
        self.open_connections = 0  # WebSocket connections past the handshake
        self.connection_listeners: list[Callable[[], None]] = []  # told when open_connections changes
        self._ws: WsServer | None = None

    async def close_sessions(self, stale: Callable[[Session], bool], code: int, reason: str) -> int:
        """Close every open connection whose session *stale* picks (a revoked token); returns how many."""
        if self._ws is None:
            return 0
        doomed = [ws for ws in self._ws.connections
                  if (session := getattr(ws, "pictl_session", None)) is not None and stale(session)]
        await asyncio.gather(*(ws.close(code, reason) for ws in doomed))
        return len(doomed)

    def set_allowed_origins(self, origins: tuple[str, ...]) -> None:
        """Browser origins admitted besides our own; a reload may change them."""
        self.allowed_origins = frozenset(o.lower().rstrip("/") for o in origins)

    @property
    def url(self) -> str:
        scheme = "wss" if self.tls else "ws"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}/ws"

    async def start(self) -> None:
        self._ws = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._process_request,
            compression=None,  # no permessage-deflate: a compression bomb costs memory
            max_size=self.max_frame_bytes,  # larger frames close with 1009
            ssl=self.tls,
            server_header=None,
            logger=ws_log,
        )
        sock = next(iter(self._ws.sockets))
        self.port = sock.getsockname()[1]

    # -- handshake --------------------------------------------------------------------------------
    def _own_origins(self, request: Request) -> set[str]:
        host = (request.headers.get("Host") or "").lower()
        scheme = "https" if self.tls else "http"
        return {f"{scheme}://{host}"} if host else set()

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.partition("?")[0]
        if path == "/healthz":
            return json_response(HTTPStatus.OK, self.health())
        if path == "/metrics":
            return await self._metrics(request)
        if path != "/ws":
            page = self.panel.response(request)
            return page if page is not None else json_response(HTTPStatus.NOT_FOUND, {"error": "not found"})
        origin = request.headers.get("Origin")
        if origin is not None:
            normal = origin.lower().rstrip("/")
            if normal not in self._own_origins(request) and normal not in self.allowed_origins:
                log.warning("refused handshake from %s: origin not allowed", self._peer(connection))
                return json_response(HTTPStatus.FORBIDDEN, {"error": "origin not allowed"})
        address = self._address(connection)
        session = Session(peer=self._peer(connection), address=address)
        auth = self.dispatcher.auth
        locked = auth.locked_for(address)
        if locked:
            self.dispatcher.metrics.auth_failures.inc()
            return json_response(HTTPStatus.TOO_MANY_REQUESTS, {"error": "too many failed authentications"},
                                 [("Retry-After", str(int(locked) + 1))])
        if sum(self.per_address.values()) >= self.max_connections:
            return json_response(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "too many connections"},
                                 [("Retry-After", "5")])
        if self.per_address.get(address, 0) >= self.max_per_address:
            return json_response(HTTPStatus.TOO_MANY_REQUESTS, {"error": "too many connections from this address"},
                                 [("Retry-After", "5")])
        header = request.headers.get("Authorization")
        if header is not None:
            secret = bearer(header)
            if secret is None or not await auth.login(session, secret):
                self.dispatcher.metrics.auth_failures.inc()
                log.warning("refused handshake from %s: bad bearer token", session.peer)
                return json_response(HTTPStatus.UNAUTHORIZED, {"error": "invalid token"},
                                     [("WWW-Authenticate", 'Bearer realm="pictl"')])
        self._count_connection(connection, address)
        connection.pictl_session = session  # type: ignore[attr-defined]
        return None

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

    @staticmethod
    def _address(connection: ServerConnection) -> str:
        address = connection.remote_address
        return str(address[0]) if isinstance(address, tuple) and address else str(address)

    async def _metrics(self, request: Request) -> Response:
        if self.metrics_tokens:
            secret = bearer(request.headers.get("Authorization"))
            token = None if secret is None else await self.dispatcher.auth.check(secret)
            if token is None or token.name not in self.metrics_tokens:
                self.dispatcher.metrics.auth_failures.inc()
                return json_response(HTTPStatus.UNAUTHORIZED, {"error": "a scrape token is required"},
                                     [("WWW-Authenticate", 'Bearer realm="pictl-metrics"')])
        body, content_type = self.dispatcher.metrics.render(request.headers.get("Accept"))
        return _response(HTTPStatus.OK, body, content_type)

    @staticmethod
    def _peer(connection: ServerConnection) -> str:
        address = connection.remote_address
        if isinstance(address, tuple) and len(address) >= 2:
            return f"{address[0]}:{address[1]}"
        return str(address)

    def health(self) -> dict[str, Any]:
        devices = self.dispatcher.devices.values()
        return {
            "status": "ok" if not self.dispatcher.draining else "stopping",
            "devices": len(devices),
            "online": sum(1 for d in devices if d.online),
        }

    # -- connection -------------------------------------------------------------------------------
    async def _handle(self, ws: ServerConnection) -> None:
        session: Session = ws.pictl_session  # type: ignore[attr-defined]
        session.extra["ws"] = ws  # events.subscribe sends on it
        slots = asyncio.Semaphore(MAX_INFLIGHT_PER_CONNECTION)
        loop = asyncio.get_running_loop()
        guard = None
        self._connections_changed(+1)
        if not session.authenticated:
            guard = loop.call_later(self.auth_timeout, self._close_if_anonymous, ws, session)
        try:
            async for frame in ws:
                work: Message | bytes
                if isinstance(frame, str):
                    work = decode(frame, self.dispatcher.max_batch)
                    reply = self.dispatcher.answer_now(session, work)
                    if not isinstance(reply, NotNow):  # answered inline: no task for the common case
                        if reply is not None:
                            await ws.send(reply, text=True)
                        continue
                else:
                    work = frame
                await slots.acquire()
                task = loop.create_task(self._frame(ws, session, work, slots))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        except ConnectionClosed:
            pass
        finally:
            self.dispatcher.events.drop(ws)
            if guard is not None:
                guard.cancel()
            self._connections_changed(-1)

    def _connections_changed(self, delta: int) -> None:
        self.open_connections += delta
        self.dispatcher.metrics.ws_connections.set(self.open_connections)
        for listener in tuple(self.connection_listeners):
            try:
                listener()
            except Exception:
                log.exception("connection listener failed")

    def _close_if_anonymous(self, ws: ServerConnection, session: Session) -> None:
        if not session.authenticated:
            log.info("closing %s: no authentication within %.0f s", session.peer, self.auth_timeout)
            task = asyncio.get_running_loop().create_task(ws.close(CLOSE_POLICY, "authentication timeout"))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _frame(self, ws: ServerConnection, session: Session, frame: Message | bytes,
                     slots: asyncio.Semaphore) -> None:
        try:
            if isinstance(frame, bytes):
                reply: str | None = binary_frame_error()
            else:
                reply = await self.dispatcher.handle_text(session, frame)
            if reply is not None:
                try:
                    await ws.send(reply)
                except ConnectionClosed:
                    log.info("reply to %s dropped: client disconnected", session.peer)
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
        pending = set(self.tasks)
        if not pending:
            return True
        _done, not_done = await asyncio.wait(pending, timeout=timeout)
        return not not_done

    async def close(self) -> None:
        if self._ws is not None:
            self._ws.close(close_connections=True)
            await self._ws.wait_closed()
            self._ws = None
        for task in list(self.tasks):
            task.cancel()
