"""The ``[wamp]`` table: this daemon as a node on a WAMP router (README: "A building of Pis").

Plain data and its parser; nothing here imports autobahn, so a config with a ``[wamp]`` table is
checked (``pictl check-config``) on a machine without the extra installed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from controller.security.secrets import read_secret_file
from controller.settings.reader import Table

NODE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # one WAMP URI component: no dots, no spaces
RESERVED_NODES = frozenset({"fleet", "error"})  # pictl.fleet.* is the aggregator's, pictl.error.* the error URIs
REALM = re.compile(r"[A-Za-z0-9_.-]{1,255}")
MIN_TICKET_LENGTH = 16


class MissingExtra(RuntimeError):
    """A configured bridge whose optional library is not installed."""


@dataclass(frozen=True)
class WampConfig:
    url: str  # ws:// or wss:// URL of the router's WebSocket transport
    realm: str  # the realm to join
    node: str  # this daemon's name on the router: its procedures are pictl.<node>.<method>
    role: str  # the pictl role applied to every call arriving over WAMP
    authid: str | None = None  # WAMP-Ticket authentication: who we are...
    ticket: str | None = field(default=None, repr=False)  # ...and the ticket, read from ticket_file
    max_retry_delay: float = 10.0  # the rejoin backoff's cap, seconds

    @property
    def prefix(self) -> str:
        return f"pictl.{self.node}."


def check_url(url: str) -> str | None:
    """Why *url* is not a router WebSocket URL, or None."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        return f"{url!r} is not a ws:// or wss:// URL"
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return f"{url!r} has an invalid port"
    return None


def read_wamp(t: Table | None, roles: Mapping[str, object]) -> WampConfig | None:
    """``[wamp]`` into a :class:`WampConfig`; None when absent (or invalid: problems are recorded)."""
    if t is None:
        return None
    url = t.string("url")
    realm = t.string("realm")
    node = t.string("node")
    role = t.string("role")
    authid = t.string("authid", default=None)
    ticket_given = t.has("ticket_file")
    ticket = t.secret_file("ticket_file", minimum=MIN_TICKET_LENGTH)  # read now: check-config reports it
    max_retry_delay = t.number("max_retry_delay", default=10.0, low=0.5, high=3600.0)
    if url is not None and (why := check_url(url)) is not None:
        t.problem("url", why)
        url = None
    if realm is not None and not REALM.fullmatch(realm):
        t.problem("realm", "realm must be 1-255 of letters, digits, '.', '_', '-'")
        realm = None
    if node is not None and (not NODE_NAME.fullmatch(node) or node in RESERVED_NODES):
        t.problem("node", "node must be 1-64 of letters, digits, '_', '-' and not "
                  + " or ".join(repr(n) for n in sorted(RESERVED_NODES)))
        node = None
    if role is not None and role not in roles:
        t.problem("role", f"no role named {role!r} in [auth.roles]")
        role = None
    if (authid is None) == ticket_given:
        t.problem("authid" if authid is None else "ticket_file", "authid and ticket_file go together (WAMP-Ticket)")
    t.finish()
    if None in (url, realm, node, role, max_retry_delay) or (authid is not None and ticket is None):
        return None
    assert url is not None and realm is not None and node is not None and role is not None
    return WampConfig(url=url, realm=realm, node=node, role=role, authid=authid, ticket=ticket,
                      max_retry_delay=max_retry_delay)


def read_ticket(path: str) -> str:
    """The WAMP-Ticket secret in *path* (``pictl aggregate --ticket-file``); ValueError says why not."""
    return read_secret_file(path, minimum=MIN_TICKET_LENGTH)
