"""Every HTTP request, handshake or not, is read and judged once, before any route sees it.

Reading headers can raise (``Headers.get`` raises on a header sent twice), so
the routes never read them: :meth:`Guard.inspect` does, catches everything a
request can be wrong about, and hands the routes a :class:`Front` of plain,
validated values or a :class:`Refusal` to answer with:

- a singleton header sent more than once (``Host``, ``Origin``, ``Authorization``,
  ``Sec-WebSocket-Key``, ``Sec-WebSocket-Version``): 400. A second ``Origin`` is a
  known trick against origin checks; the first one is not "the" origin.
  ``X-Forwarded-For`` may repeat (HAProxy adds its own line), and only counts
  from a trusted proxy (:mod:`controller.http.peer`).
- no ``Host``, or one that is not ``name[:port]``: 400.
- a ``Host`` the daemon does not answer to: 421 on every route. DNS rebinding
  needs a name the attacker controls that resolves to the Pi; the daemon only
  answers IP literals, ``localhost``, its own hostname, ``<hostname>.local`` and
  the configured ``allowed_hosts``.
- an ``Authorization`` header that is not ``Bearer <secret>`` on a route that
  reads it (``/ws``, ``/metrics``): 401.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from http import HTTPStatus

from websockets.http11 import Request

from controller.http.peer import Client, ForwardingError, TrustedProxies
from controller.settings.front import HOST_NAME

SINGLETONS = ("Host", "Origin", "Authorization", "Sec-WebSocket-Key", "Sec-WebSocket-Version")
FORWARDED_SINGLETONS = ("X-Real-IP", "X-Forwarded-Proto")  # from a trusted proxy
AUTH_ROUTES = frozenset({"/ws", "/metrics"})  # the routes that read Authorization
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +([\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?) *")


def default_host_names() -> frozenset[str]:
    """What the daemon answers to without configuration: localhost, its hostname, <hostname>.local."""
    names = {"localhost"}
    hostname = socket.gethostname().lower().rstrip(".")  # no DNS: the kernel's name
    if hostname and HOST_NAME.fullmatch(hostname):
        short = hostname.partition(".")[0]
        names.update({hostname, short, f"{short}.local"})
    return frozenset(names)


def split_host(value: str) -> tuple[str, str | None] | None:
    """``Host`` into (lower-case host, port or None); None when it is not ``host[:port]``."""
    value = value.strip().lower()
    if value.startswith("["):
        inner, close, rest = value[1:].partition("]")
        if not close or (rest and not re.fullmatch(r":[0-9]{1,5}", rest)):
            return None
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            return None
        return inner, rest[1:] or None
    host, colon, port = value.partition(":")
    if colon and not re.fullmatch(r"[0-9]{1,5}", port):
        return None
    if not HOST_NAME.fullmatch(host):
        return None
    return host.rstrip("."), port or None


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Refusal:
    """An answer before any route ran: status, reason (a metric label), message for the client."""

    status: HTTPStatus
    reason: str  # bad_request, misdirected, unauthorized
    message: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Front:
    """A request that passed the guard: every header a route needs, read once."""

    route: str  # the path without the query
    client: Client
    host: str  # the Host header as sent (its host part is allowed)
    origin: str | None  # normalised: lower case, no trailing slash
    secret: str | None  # from Authorization: Bearer, on the routes that read it
    scheme: str  # "http"/"https" as the browser used it (X-Forwarded-Proto from a trusted proxy)
    accept: str | None = field(default=None)  # for /metrics' content negotiation

    @property
    def own_origin(self) -> str:
        return f"{self.scheme}://{self.host}"


class Guard:
    """The request checks; :meth:`configure` applies a reloaded ``[server]``."""

    def __init__(self, *, tls: bool = False, trusted_proxies: Iterable[str] = (),
                 allowed_hosts: Iterable[str] = ()) -> None:
        self.tls = tls
        self.proxies = TrustedProxies()
        self.hosts: frozenset[str] = frozenset()
        self.configure(trusted_proxies, allowed_hosts)

    def configure(self, trusted_proxies: Iterable[str], allowed_hosts: Iterable[str]) -> None:
        self.proxies = TrustedProxies(trusted_proxies)
        self.hosts = default_host_names() | {h.lower().rstrip(".") for h in allowed_hosts}

    def host_allowed(self, host: str) -> bool:
        return is_ip_literal(host) or host in self.hosts

    def inspect(self, remote: object, request: Request) -> Front | Refusal:
        """Judge *request* from the socket address *remote*. Never raises for anything a client sent."""
        headers = request.headers
        route = request.path.partition("?")[0]
        for name in SINGLETONS:
            if len(headers.get_all(name)) > 1:
                return Refusal(HTTPStatus.BAD_REQUEST, "bad_request", f"{name} sent more than once")
        try:
            client = self.proxies.client(remote, headers)
        except ForwardingError as exc:
            return Refusal(HTTPStatus.BAD_REQUEST, "bad_request", str(exc))
        scheme = "https" if self.tls else "http"
        if client.via is not None:
            for name in FORWARDED_SINGLETONS:
                if len(headers.get_all(name)) > 1:
                    return Refusal(HTTPStatus.BAD_REQUEST, "bad_request", f"{name} sent more than once")
            proto = headers.get_all("X-Forwarded-Proto")
            if proto and proto[0].strip().lower() in ("http", "https"):
                scheme = proto[0].strip().lower()
        host_values = headers.get_all("Host")
        if not host_values:
            return Refusal(HTTPStatus.BAD_REQUEST, "bad_request", "no Host header")
        parts = split_host(host_values[0])
        if parts is None:
            return Refusal(HTTPStatus.BAD_REQUEST, "bad_request", "Host is not host[:port]")
        if not self.host_allowed(parts[0]):  # a valid host name by now: safe to echo and log
            return Refusal(HTTPStatus.MISDIRECTED_REQUEST, "misdirected",
                           f"this server does not answer to the name {parts[0][:100]!r} "
                           f"(the operator can add it to [server] allowed_hosts)")
        origins = headers.get_all("Origin")
        origin = origins[0].strip().lower().rstrip("/") if origins else None
        secret = None
        if route in AUTH_ROUTES:
            auth = headers.get_all("Authorization")
            if auth:
                match = _BEARER.fullmatch(auth[0])
                if match is None:
                    return Refusal(HTTPStatus.UNAUTHORIZED, "unauthorized",
                                   "Authorization must be: Bearer TOKEN",
                                   (("WWW-Authenticate", 'Bearer realm="pictl"'),))
                secret = match.group(1)
        accept = headers.get_all("Accept")
        return Front(route=route, client=client, host=host_values[0].strip().lower(), origin=origin,
                     secret=secret, scheme=scheme, accept=accept[0] if len(accept) == 1 else None)
