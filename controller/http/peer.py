"""Who is really on the other end: the client address behind a trusted reverse proxy.

A TCP peer in ``[server] trusted_proxies`` (an nginx or HAProxy on the same
machine, say) speaks for its clients: the client is the right-most address of
``X-Forwarded-For`` that is not itself a trusted proxy (each proxy appends the
address it saw, so everything left of that entry is whatever the client chose
to send), else ``X-Real-IP``. From any other peer those headers are ignored:
they are just text a client typed. Every per-address rule (failed-login
slowdown and lockout, connections per address), the logs and the audit trail
use the address this module finds.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from websockets.datastructures import Headers

from controller.settings.front import parse_networks

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class ForwardingError(ValueError):
    """A trusted proxy sent forwarding headers that cannot be read (answered 400)."""


def parse_address(text: str) -> Address | None:
    """An address as proxies write it: ``1.2.3.4``, ``1.2.3.4:5678``, ``::1``, ``[::1]:5678``; IPv4-mapped
    IPv6 is read as IPv4. None when it is not an address (``unknown``, a hostname, garbage)."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True)
class Client:
    """Where a request came from."""

    address: str  # the client's address: what per-address rules, logs and the audit trail use
    peer: str  # for logs: "address:port" when direct, the client address when forwarded
    via: str | None = None  # "address:port" of the trusted proxy that forwarded it, if any


class TrustedProxies:
    """The ``[server] trusted_proxies`` rule; replaced as a whole on reload."""

    def __init__(self, networks: Iterable[str] = ()) -> None:
        self.networks = parse_networks(networks)

    def trusts(self, address: Address | None) -> bool:
        return address is not None and any(address in n for n in self.networks)

    def client(self, remote: object, headers: Headers) -> Client:
        """The client of a connection from *remote* (the socket's peer address) that sent *headers*.

        Raises :class:`ForwardingError` when a trusted proxy's headers name no usable address.
        """
        host, port = _split_remote(remote)
        direct = Client(address=host, peer=f"{host}:{port}" if port is not None else host)
        peer = parse_address(host)
        if not self.trusts(peer):
            return direct  # headers from anyone else are ignored
        via = direct.peer
        entries = [e for value in headers.get_all("X-Forwarded-For") for e in value.split(",")]
        client: Address | None = None
        for entry in reversed(entries):
            address = parse_address(entry)
            if address is None:
                raise ForwardingError("X-Forwarded-For from a trusted proxy holds something that is not an address")
            client = address
            if not self.trusts(address):
                break  # the first hop no trusted proxy vouches for beyond: the client
        if client is None:
            real = headers.get_all("X-Real-IP")
            if len(real) > 1:
                raise ForwardingError("X-Real-IP more than once")
            if real:
                client = parse_address(real[0])
                if client is None:
                    raise ForwardingError("X-Real-IP from a trusted proxy is not an address")
        if client is None:
            return direct  # the proxy said nothing: it is the client (a health check, say)
        return Client(address=str(client), peer=str(client), via=via)


def _split_remote(remote: object) -> tuple[str, int | None]:
    if isinstance(remote, tuple) and remote:
        port = remote[1] if len(remote) > 1 and isinstance(remote[1], int) else None
        address = parse_address(str(remote[0]))
        return (str(address) if address is not None else str(remote[0])), port
    return str(remote), None
