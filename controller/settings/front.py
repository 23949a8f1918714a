"""``[server] trusted_proxies`` and ``allowed_hosts``: who may speak for clients, which names the
daemon answers to (used by controller/http/peer.py and controller/http/guard.py)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from controller.settings.reader import Table

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
HOST_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")  # lower case; a trailing dot is the same name


def parse_networks(items: Iterable[str]) -> tuple[Network, ...]:
    """Addresses and CIDR ranges; ValueError names the first that is neither."""
    out = []
    for item in items:
        try:
            out.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or a CIDR range such as 192.168.1.0/24") from None
    return tuple(out)


def host_name_problem(name: str) -> str | None:
    """Why *name* cannot be an ``allowed_hosts`` entry, or None."""
    if not HOST_NAME.fullmatch(name.lower()):
        return f"{name!r} is not a host name (letters, digits, '-' and '.'; no port, scheme or wildcard)"
    return None


def read_front(t: Table) -> dict[str, tuple[str, ...] | None]:
    """The two keys of the ``[server]`` table *t*, normalised; None for a key with a problem."""
    proxies = t.strings("trusted_proxies", default=())
    try:
        proxies = tuple(str(n) for n in parse_networks(proxies or ()))
    except ValueError as exc:
        t.problem("trusted_proxies", str(exc))
        proxies = None
    hosts = t.strings("allowed_hosts", default=())
    for name in hosts or ():
        problem = host_name_problem(name)
        if problem:
            t.problem("allowed_hosts", problem)
            hosts = None
    return {"trusted_proxies": proxies,
            "allowed_hosts": None if hosts is None else tuple(h.lower().rstrip(".") for h in hosts)}
