"""The asyncio client: calls with typed errors, live events, reconnects that resume (see the package's docstring)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import ssl
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from controller.client.errors import (
    Closed,
    ConnectionLost,
    ReplyTimeout,
    RpcError,
    Unauthorized,
    Unreachable,
    error_from,
    is_action,
)
from controller.wire import protocol
from drivers.backoff import Backoff

log = logging.getLogger(__name__)

DEFAULT_URL = "ws://127.0.0.1:8765/ws"
T = TypeVar("T")


# -- events -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Event:
    """One event. A synthetic ``topic == "resync"`` event (``seq`` of the snapshot, ``data`` the
    ``system.status`` result) says events were lost and the status is the truth to go on from."""

    topic: str
    seq: int
    time: str | None
    data: dict[str, Any]
    epoch: str | None = None

    @property
    def is_resync(self) -> bool:
        return self.topic == "resync"

    def to_dict(self) -> dict[str, Any]:
        return {"topic": self.topic, "seq": self.seq, "time": self.time, "data": self.data}


@dataclass(eq=False)
class _Stream:
    patterns: tuple[str, ...]
    queue: asyncio.Queue[Event | BaseException] = field(default_factory=asyncio.Queue)

    def wants(self, topic: str) -> bool:
        return topic == "resync" or any(fnmatchcase(topic, p) for p in self.patterns)


@dataclass(eq=False)
class _Pending:
    method: str
    params: dict[str, Any] | None
    retry: bool  # resend after a reconnect (it carries a request_key)
    future: asyncio.Future[Any]


# -- the client -------------------------------------------------------------------------------------
class Client:
    """One WebSocket link to pictl, kept up until :meth:`close`."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, *, reconnect: bool = True,
                 backoff: tuple[float, float] = (0.2, 5.0), open_timeout: float = 5.0,
                 origin: str | None = None, on_link: Callable[[bool, str], None] | None = None,
                 cafile: str | None = None) -> None:
        self.url = url
        # wss:// through a proxy whose certificate comes from a private CA: trust that CA's PEM file
        # (in addition to nothing else). Default: $PICTL_CAFILE, else the system's trust store.
        self.cafile = cafile or os.environ.get("PICTL_CAFILE") or None
        self._tls: ssl.SSLContext | None = None
        self.token = token
        self.reconnect = reconnect
        self.backoff = backoff
        self.open_timeout = open_timeout
        self.origin = origin
        self.on_link = on_link  # told (up, why) when the link drops and when it is back
        self.seq: int | None = None  # last seq seen (events or a subscribe/status reply)
        self.epoch: str | None = None  # the daemon run that seq belongs to
        self.connects = 0  # successful connections so far (1 + reconnects)
        self._ws: ClientConnection | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._streams: list[_Stream] = []
        self._patterns: set[str] = set()
        self._up = asyncio.Event()  # set while a link is open and subscriptions are restored
        self._fatal: BaseException | None = None  # ends the client (refused token, closed)
        self._runner: asyncio.Task[None] | None = None
        self._first: asyncio.Future[None] | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    async def connect(self) -> Client:
        """Open the link. Raises :class:`Unauthorized` (token refused) or :class:`Unreachable`."""
        if self._runner is not None:
            return self
        loop = asyncio.get_running_loop()
        self._first = loop.create_future()
        self._runner = loop.create_task(self._run(), name="pictl-client")
        await self._first
        return self

    async def close(self) -> None:
        self._fail_all(Closed("client closed"))
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        if self._ws is not None:
            await self._ws.close()
            self._ws = None

    async def __aenter__(self) -> Client:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._up.is_set()

    def _tls_context(self) -> ssl.SSLContext | None:
        """The TLS context for a wss:// URL with a ``cafile``; None: the library's default."""
        if self.cafile is None or not self.url.lower().startswith("wss:"):
            return None
        if self._tls is None:
            try:
                self._tls = ssl.create_default_context(cafile=self.cafile)
            except (OSError, ssl.SSLError) as exc:
                raise Unreachable(f"cannot use the CA file {self.cafile}: {getattr(exc, 'strerror', None) or exc}") \
                    from None
        return self._tls

    async def _open(self) -> ClientConnection:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        tls: dict[str, Any] = {}  # websockets refuses ssl=None for wss:// and any ssl for ws://
        if (context := self._tls_context()) is not None:
            tls["ssl"] = context
        try:
            return await connect(self.url, additional_headers=headers, compression=None,
                                 open_timeout=self.open_timeout, origin=self.origin,  # type: ignore[arg-type]
                                 max_size=2**22, **tls)
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403, 429):
                reason = {401: "token refused", 403: "origin refused", 429: "too many failed logins"}[status]
                raise Unauthorized(protocol.UNAUTHORIZED, f"handshake refused: HTTP {status} ({reason})",
                                   {"http_status": status}) from None
            raise Unreachable(f"handshake refused: HTTP {status}") from None
        except ssl.SSLCertVerificationError as exc:
            hint = "" if self.cafile else "; signed by a private CA? pass its certificate with --cafile or PICTL_CAFILE"
            raise Unreachable(f"cannot connect to {self.url}: certificate verify failed: "
                              f"{exc.verify_message or exc}{hint}") from None
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise Unreachable(f"cannot connect to {self.url}: {exc}") from None

    async def _run(self) -> None:
        assert self._first is not None
        retry = Backoff(*self.backoff, jitter=0.5)  # spread: a building of panels must not come back at once
        while True:
            try:
                ws = await self._open()
            except Unauthorized as exc:
                self._end(exc)
                return
            except Unreachable as exc:
                if not self._first.done() or not self.reconnect:
                    self._end(exc)
                    return
                delay = retry.next()
                log.info("pictl link: %s; retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                continue
            self._ws = ws
            self.connects += 1
            reader = asyncio.get_running_loop().create_task(self._read(ws))
            try:
                await self._restore(ws)
            except RpcError as exc:  # e.g. the role may no longer subscribe: nothing to carry on with
                self._end(exc)
                await ws.close()
                await reader
                return
            except (ConnectionClosed, TimeoutError) as exc:
                log.info("pictl link: restoring after reconnect failed: %s", exc)
            else:
                retry.reset()
                self._up.set()
                if not self._first.done():
                    self._first.set_result(None)
                else:
                    self._tell(True, "reconnected")
            await reader
            self._up.clear()
            self._ws = None
            self._tell(False, f"link lost ({ws.close_code or 'no close frame'}"
                              f"{': ' + ws.close_reason if ws.close_reason else ''})")
            if not self.reconnect:
                self._end(ConnectionLost("the link to pictl closed"))
                return
            for request_id, pending in list(self._pending.items()):
                if not pending.retry:
                    del self._pending[request_id]
                    if not pending.future.done():
                        pending.future.set_exception(ConnectionLost(
                            f"link lost during {pending.method}: outcome unknown (no request_key)"))
            log.info("pictl link lost; reconnecting")
            await asyncio.sleep(retry.next())

    def _tell(self, up: bool, why: str) -> None:
        if self.on_link is not None:
            try:
                self.on_link(up, why)
            except Exception:
                log.exception("on_link callback failed")

    def _end(self, exc: BaseException) -> None:
        self._fatal = exc
        if self._first is not None and not self._first.done():
            self._first.set_exception(exc)
        self._fail_all(exc)

    def _fail_all(self, exc: BaseException) -> None:
        self._fatal = self._fatal or exc
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(exc)
        self._pending.clear()
        for stream in self._streams:
            stream.queue.put_nowait(exc)
        self._up.set()  # wake waiters so they see _fatal

    async def _restore(self, ws: ClientConnection) -> None:
        """After (re)connecting: subscribe again (resuming), resend keyed calls still waiting."""
        if self._patterns:
            await self._subscribe(ws, sorted(self._patterns), resume=True)
        for request_id, pending in list(self._pending.items()):
            await self._send(ws, request_id, pending.method, pending.params)

    async def _subscribe(self, ws: ClientConnection, patterns: list[str], resume: bool) -> None:
        params: dict[str, Any] = {"topics": patterns}
        if resume and self.seq is not None:
            params["since_seq"] = self.seq
            if self.epoch is not None:
                params["epoch"] = self.epoch
        reply = await self._direct(ws, "events.subscribe", params)
        resync = bool(reply.get("resync")) or (resume and self.epoch is not None and reply.get("epoch") != self.epoch)
        self.epoch = reply.get("epoch", self.epoch)
        if resync:
            status = await self._direct(ws, "system.status", None)
            self.seq = status.get("seq", reply.get("seq"))
            marker = Event("resync", self.seq or 0, None, status, self.epoch)
            for stream in self._streams:
                stream.queue.put_nowait(marker)
        else:
            self._saw_seq(reply.get("seq"))

    def _saw_seq(self, seq: Any) -> None:
        if isinstance(seq, int) and (self.seq is None or seq > self.seq):
            self.seq = seq

    async def _direct(self, ws: ClientConnection, method: str, params: dict[str, Any] | None) -> Any:
        """A call on *ws* right now (used while restoring, before the link counts as up)."""
        request_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = _Pending(method, params, False, future)
        try:
            await self._send(ws, request_id, method, params)
            async with asyncio.timeout(self.open_timeout * 2):
                return await future
        finally:
            self._pending.pop(request_id, None)

    @staticmethod
    async def _send(ws: ClientConnection, request_id: int, method: str, params: dict[str, Any] | None) -> None:
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        await ws.send(json.dumps(message))

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for frame in ws:
                try:
                    message = json.loads(frame)
                except ValueError:
                    log.warning("pictl link: a frame that is not JSON")
                    continue
                for item in message if isinstance(message, list) else [message]:
                    self._deliver(item)
        except ConnectionClosed:
            pass

    def _deliver(self, item: Any) -> None:
        if not isinstance(item, dict):
            return
        if item.get("method") == "event" and "id" not in item:
            params = item.get("params") or {}
            seq = params.get("seq")
            if isinstance(seq, int) and self.seq is not None and seq <= self.seq:
                return  # already seen (a replay overlapping what arrived before the drop)
            self._saw_seq(seq)
            event = Event(str(params.get("topic")), seq if isinstance(seq, int) else 0, params.get("time"),
                          params.get("data") or {}, self.epoch)
            for stream in self._streams:
                if stream.wants(event.topic):
                    stream.queue.put_nowait(event)
            return
        reply_id = item.get("id")
        pending = self._pending.pop(reply_id, None) if isinstance(reply_id, int) else None
        if pending is None or pending.future.done():
            return
        if "error" in item:
            pending.future.set_exception(error_from(item["error"]))
        else:
            pending.future.set_result(item.get("result"))

    # -- calls ------------------------------------------------------------------------------------
    async def call(self, method: str, params: dict[str, Any] | None = None, /, *, wait: float | None = None,
                   at_most_once: bool | None = None, **kwparams: Any) -> Any:
        """Call *method* with *params* (a dict, and/or keyword arguments) and return its result.

        Raises the :class:`RpcError` subclass for the error code, :class:`ReplyTimeout` past
        *wait*, :class:`ConnectionLost` if the link dropped under a call that cannot be retried.
        """
        merged: dict[str, Any] | None = {**(params or {}), **kwparams} if params or kwparams else None
        keyed = is_action(method) if at_most_once is None else at_most_once
        if keyed:
            merged = dict(merged or {})
            merged.setdefault("request_key", uuid.uuid4().hex)
        if wait is None:
            timeout = (merged or {}).get("timeout")
            wait = 2 * timeout + 5.0 if isinstance(timeout, (int, float)) and timeout > 0 else 30.0
        if self._runner is None:
            await self.connect()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(wait):
                await self._wait_up()
                request_id = next(self._ids)
                self._pending[request_id] = _Pending(method, merged, keyed, future)
                if self._ws is not None:
                    with contextlib.suppress(ConnectionClosed):  # a keyed call is resent on reconnect
                        await self._send(self._ws, request_id, method, merged)
                return await future
        except TimeoutError:
            raise ReplyTimeout(f"no reply to {method} within {wait:g} s") from None
        finally:
            for request_id, pending in list(self._pending.items()):
                if pending.future is future:
                    del self._pending[request_id]

    async def _wait_up(self) -> None:
        await self._up.wait()
        if self._fatal is not None:
            raise self._fatal

    async def status(self) -> dict[str, Any]:
        """``system.status``: every device with kind, online, state, last_update."""
        return await self.call("system.status")

    async def describe(self) -> dict[str, Any]:
        return await self.call("system.describe")

    # -- events -----------------------------------------------------------------------------------
    def events(self, *patterns: str) -> EventStream:
        """Events whose topic matches any of *patterns* (shell-style; default ``*``).

        ``async for event in client.events("door.*")`` subscribes on the first iteration;
        ``await stream.start()`` subscribes now (events from then on are kept for the stream).
        Use ``async with client.events(...) as stream`` to stop listening before the client closes.
        Streams survive reconnects (see the module docstring for ``resync``).
        """
        return EventStream(self, tuple(patterns) or ("*",))

    async def _add_stream(self, stream: _Stream) -> None:
        if self._runner is None:
            await self.connect()
        self._streams.append(stream)
        new = sorted(set(stream.patterns) - self._patterns)
        self._patterns.update(stream.patterns)
        if new:
            await self._wait_up()
            assert self._ws is not None
            await self._subscribe(self._ws, new, resume=False)


class EventStream:
    """An async iterator of :class:`Event` for some topic patterns (see :meth:`Client.events`)."""

    def __init__(self, client: Client, patterns: tuple[str, ...]) -> None:
        self.client = client
        self.patterns = patterns
        self._stream = _Stream(patterns)
        self._started = False

    async def start(self) -> EventStream:
        """Subscribe now; returns the stream."""
        if not self._started:
            self._started = True
            await self.client._add_stream(self._stream)
        return self

    def close(self) -> None:
        """Stop collecting events for this stream (the daemon-side subscription stays with the client)."""
        if self._stream in self.client._streams:
            self.client._streams.remove(self._stream)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        await self.start()
        item = await self._stream.queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    async def __aenter__(self) -> EventStream:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        self.close()
