"""Every accepted connection counts from the moment it is accepted, whatever it turns out to be.

websockets reads a request and calls ``process_request`` only after the TCP accept: a client that
connects and sends nothing (or one byte a second) holds a descriptor without ever reaching the
handshake checks. So the listener counts transports itself, in :meth:`Admission.opened` (the
connection's ``connection_made``) until :meth:`Admission.closed` (``connection_lost``):

- at most :attr:`Admission.limit` in all: ``max_connections`` plus :data:`SPARE` for plain HTTP
  (scrapes, the panel's files) and handshakes beside full WebSocket slots, and never more than the
  process's descriptor limit leaves after :data:`RESERVED_FDS` for the daemon's own files;
- at most ``max_connections_per_address`` plus :data:`SPARE_PER_ADDRESS` from one peer address. The
  spare lets the handshake check answer a legitimate client's one-too-many WebSocket with a 429 and
  ``Retry-After`` rather than a reset; a trusted proxy's connections count under the client address
  each names, once its request is read (the handshake check);
- a connection whose request, or upgrade, is not done within ``handshake_timeout`` is dropped.

Past the per-address cap a new connection is closed at once, before anything is read. At the total
cap, the oldest connection that has not sent its request yet makes room (a real client sends it at
once and is then never dropped this way: slow sockets from many addresses cannot lock it out); only
a house full of connections that did send theirs refuses the newcomer. Each refusal is counted in
``pictl_ws_refused_total{reason}`` (``too_many_connections``, ``too_many_from_address``,
``handshake_timeout``) and logged at most once per reason per 10 s. If descriptors run out anyway
(something else holds them), asyncio's accept() failure is logged the same way, not as one
traceback per attempt.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from websockets.protocol import State

from controller.http.peer import parse_address
from controller.http.refusals import RefusalLog

log = logging.getLogger(__name__)

SPARE = 16  # transports beyond max_connections: plain HTTP requests and handshakes at a full house
SPARE_PER_ADDRESS = 4  # likewise from one address (the panel's files beside its WebSocket, a polite 429)
RESERVED_FDS = 64  # descriptors kept for the daemon itself (buses, serial ports, audit, MQTT, WAMP, threads)
ACCEPT_FAILED = "socket.accept() out of system resource"  # asyncio's message when accept() hits EMFILE


class Transported(Protocol):
    """What admission needs of a connection (websockets' ServerConnection)."""

    transport: asyncio.Transport
    protocol: Any
    request: Any  # the HTTP request once it has arrived, else None


def descriptors_in_use() -> int | None:
    """Open file descriptors of this process (Linux), or None where that cannot be read."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


class Admission:
    """The listener's own count of accepted connections, and its refusals."""

    def __init__(self, refusals: RefusalLog, trusted: Callable[[str], bool], *, max_connections: int,
                 max_per_address: int, handshake_timeout: float) -> None:
        self.refusals = refusals  # counts and logs (throttled) each refusal
        self.trusted = trusted  # whether a peer address is a trusted proxy (counted per client later)
        self.max_per_address = max_per_address + SPARE_PER_ADDRESS  # transports from one direct peer
        self.handshake_timeout = handshake_timeout
        self.wanted = max_connections + SPARE  # transports the caps allow
        self.limit = self.wanted  # transports allowed: lower when descriptors are short (see start)
        self.transports = 0  # accepted and not yet closed
        self.by_peer: dict[str, int] = {}  # direct peer address -> its transports
        self._deadlines: dict[int, asyncio.TimerHandle] = {}  # id(connection) -> its handshake deadline
        self._opening: OrderedDict[int, Transported] = OrderedDict()  # not yet past the handshake, oldest first
        self._peers: dict[int, str | None] = {}  # id(connection) -> the address it is counted under
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous_handler: Any = None

    def start(self) -> None:
        """Size the limit to the descriptors this process may open (raising its soft limit up to the
        hard one if needed), and take over asyncio's report of a failed accept()."""
        in_use = descriptors_in_use()
        needed = self.wanted + RESERVED_FDS + (in_use or RESERVED_FDS)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < needed and (hard == resource.RLIM_INFINITY or hard > soft):
            raised = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
            try:  # a soft limit may rise to the hard one (not under the unit's ~@resources filter)
                resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
                soft = raised
            except (OSError, ValueError) as exc:
                log.info("could not raise the descriptor limit from %d to %d: %s", soft, raised, exc)
        if soft != resource.RLIM_INFINITY and soft < needed:
            self.limit = max(1, soft - RESERVED_FDS - (in_use or RESERVED_FDS))
            log.warning("only %d descriptors (LimitNOFILE) for %d connections and the daemon's own files: at most "
                        "%d connections will be accepted at once; raise LimitNOFILE to %d", soft, self.wanted,
                        self.limit, needed)
        self._loop = loop = asyncio.get_running_loop()
        self._previous_handler = loop.get_exception_handler()
        loop.set_exception_handler(self._loop_exception)

    def close(self) -> None:
        for handle in self._deadlines.values():
            handle.cancel()
        self._deadlines.clear()
        if self._loop is not None and not self._loop.is_closed():
            self._loop.set_exception_handler(self._previous_handler)
        self._loop = None

    # -- the connection's hooks -------------------------------------------------------------------
    def opened(self, connection: Transported) -> None:
        """A connection was accepted (nothing read yet): count it, refuse it past a cap."""
        transport = connection.transport
        address = _address(transport.get_extra_info("peername"))
        counted = None if address is None or self.trusted(address) else address
        key = id(connection)
        self._peers[key] = counted
        self.transports += 1
        if counted is not None:
            self.by_peer[counted] = self.by_peer.get(counted, 0) + 1
        peer = address or "?"
        if counted is not None and self.by_peer[counted] > self.max_per_address:
            self.refusals.refused("too_many_from_address", peer,
                                  f"{self.max_per_address} connections open or opening from this address "
                                  "(closed at once)")
            transport.abort()
            return
        if self.transports > self.limit and not self._make_room():
            self.refusals.refused("too_many_connections", peer, f"{self.limit} connections open")
            transport.abort()
            return
        self._opening[key] = connection
        loop = asyncio.get_running_loop()
        self._deadlines[key] = loop.call_later(self.handshake_timeout, self._expired, connection, peer)

    def _make_room(self) -> bool:
        """Drop the oldest connection that has not even sent its request, for a newcomer; False when none
        has. A client that sent its request (a real one does at once) is never dropped this way."""
        while self._opening:
            key, oldest = self._opening.popitem(last=False)
            if oldest.request is None and not oldest.transport.is_closing():
                self.refusals.refused("too_many_connections", self._peer_of(key),
                                      f"{self.limit} connections open: the oldest unfinished handshake "
                                      "made room for a newcomer")
                oldest.transport.abort()
                return True
        return False

    def _peer_of(self, key: int) -> str:
        return self._peers.get(key) or "?"

    def closed(self, connection: Transported) -> None:
        """The connection is gone, however it ended."""
        key = id(connection)
        handle = self._deadlines.pop(key, None)
        if handle is not None:
            handle.cancel()
        self._opening.pop(key, None)
        if key not in self._peers:
            return
        counted = self._peers.pop(key)
        self.transports -= 1
        if counted is not None:
            left = self.by_peer.get(counted, 1) - 1
            if left > 0:
                self.by_peer[counted] = left
            else:
                self.by_peer.pop(counted, None)

    def _expired(self, connection: Transported, peer: str) -> None:
        self._deadlines.pop(id(connection), None)
        self._opening.pop(id(connection), None)
        if connection.protocol.state is State.CONNECTING and not connection.transport.is_closing():
            self.refusals.refused("handshake_timeout", peer,
                                  f"no complete request within {self.handshake_timeout:g} s")
            connection.transport.abort()

    # -- descriptors ran out anyway -----------------------------------------------------------------
    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == ACCEPT_FAILED:
            exc = context.get("exception")
            self.refusals.refused("out_of_descriptors", "listener",
                                  f"accept() failed: {exc.strerror if isinstance(exc, OSError) else exc}; "
                                  "retrying in 1 s")
            return
        if self._previous_handler is not None:
            self._previous_handler(loop, context)
        else:
            loop.default_exception_handler(context)


def _address(peername: object) -> str | None:
    if isinstance(peername, tuple) and peername:
        address = parse_address(str(peername[0]))
        return str(address) if address is not None else str(peername[0])
    return None
