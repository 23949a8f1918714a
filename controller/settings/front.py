"""``[server] trusted_proxies`` and ``allowed_hosts``: who may speak for clients, which names the
daemon answers to (see controller/doors/peer.py and controller/doors/http_guard.py)."""

from __future__ import annotations

from controller.doors.http_guard import host_name_problem
from controller.doors.peer import parse_networks
from controller.settings.reader import Table


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
