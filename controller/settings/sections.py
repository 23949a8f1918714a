"""The daemon's own config sections: [server], [events], [metrics], [audit]."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass

from controller.security.policy import Token
from controller.settings.front import read_front
from controller.settings.reader import Document, Table

DEFAULT_LISTEN = "127.0.0.1:8765"


@dataclass(frozen=True)
class ServerConfig:
    host: str  # listen address
    port: int  # listen port
    allowed_origins: tuple[str, ...]  # browser origins allowed besides the daemon's own
    max_frame_bytes: int  # a bigger frame closes the connection with 1009
    max_batch: int  # JSON-RPC batch members accepted in one frame
    tls: tuple[str, str] | None = None  # (certificate, key) files: serve wss://
    auth_timeout: float = 10.0  # an unauthenticated connection is closed after this long
    handshake_timeout: float = 10.0  # a connection whose HTTP request or upgrade is not done by then is dropped
    max_connections: int = 200  # WebSocket connections in total
    max_connections_per_address: int = 20  # from one client address
    request_key_window: float = 300.0  # seconds a request_key is remembered (at-most-once)
    # The front door (issues 12, 17): read by controller/settings/front.py.
    trusted_proxies: tuple[str, ...] = ()  # proxy addresses/networks whose X-Forwarded-For is believed
    allowed_hosts: tuple[str, ...] = ()  # Host names answered besides IP literals, localhost, the hostname


@dataclass(frozen=True)
class EventsConfig:
    buffer: int  # recent events kept for since_seq resumes
    max_pending_bytes: int  # unsent bytes per subscriber before it is cut off (close 1013)


@dataclass(frozen=True)
class MetricsConfig:
    tokens: tuple[str, ...]  # names of tokens allowed to scrape /metrics; empty: open


@dataclass(frozen=True)
class AuditConfig:
    file: str | None  # JSON-lines file; None: audit to the log only
    max_bytes: int  # rotate when the file reaches this size
    backups: int  # rotated files kept
    fsync: bool  # fsync each entry (survives power loss; costs an SD-card write per action)


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) into its parts; ValueError when malformed."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not host:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    port = int(port_text)
    if not 0 <= port < 65536:
        raise ValueError(f"port must be 0-65535 (0: any free port), got {port}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host)
    return host, port


def read_server(t: Table, doc: Document) -> ServerConfig | None:
    listen = t.string("listen", default=DEFAULT_LISTEN)
    origins = t.strings("allowed_origins", default=())
    for origin in origins or ():
        if not re.fullmatch(r"https?://[^/\s]+", origin):
            t.problem("allowed_origins", f"{origin!r} is not an origin like https://panel.example:8443")
    cert = t.string("tls_cert", default=None)
    key = t.string("tls_key", default=None)
    if (cert is None) != (key is None):
        t.problem("tls_cert" if cert is None else "tls_key", "tls_cert and tls_key go together")
    base = os.path.dirname(os.path.abspath(doc.file))
    tls = None
    if cert and key:
        tls = (os.path.join(base, cert), os.path.join(base, key))
        for field_name, path in zip(("tls_cert", "tls_key"), tls, strict=True):
            if not os.path.isfile(path):
                t.problem(field_name, f"no such file: {path}")
    values = {
        "max_frame_bytes": t.integer("max_frame_bytes", default=65536, low=1024, high=16 * 1024 * 1024),
        "max_batch": t.integer("max_batch", default=50, low=1, high=1000),
        "auth_timeout": t.number("auth_timeout", default=10.0, high=3600.0),
        "handshake_timeout": t.number("handshake_timeout", default=10.0, high=300.0),
        "max_connections": t.integer("max_connections", default=200, low=1, high=100000),
        "max_connections_per_address": t.integer("max_connections_per_address", default=20, low=1, high=100000),
        "request_key_window": t.number("request_key_window", default=300.0, high=86400.0),
        **read_front(t),
    }
    t.finish()
    try:
        host, port = parse_listen(listen or DEFAULT_LISTEN)
    except ValueError as exc:
        doc.problem(("server", "listen"), str(exc))
        return None
    if None in values.values():
        return None
    return ServerConfig(host=host, port=port, allowed_origins=tuple(origins or ()), tls=tls, **values)


def read_live(root: Table, doc: Document, tokens: tuple[Token, ...]) -> tuple[EventsConfig, MetricsConfig,
                                                                              AuditConfig]:
    t = root.section("events")
    events = EventsConfig(
        buffer=t.integer("buffer", default=1000, low=0, high=1_000_000),
        max_pending_bytes=1024 * t.integer("max_pending_kib", default=256, low=16, high=65536),
    )
    t.finish()
    t = root.section("metrics")
    scrapers = t.strings("tokens", default=())
    for name in scrapers:
        if name not in {tok.name for tok in tokens}:
            t.problem("tokens", f"no token named {name!r} in [auth.tokens]")
    t.finish()
    t = root.section("audit")
    file = t.string("file", default=None)
    if file:
        file = os.path.join(os.path.dirname(os.path.abspath(doc.file)), os.path.expanduser(file))
    audit = AuditConfig(
        file=file or None,
        max_bytes=t.integer("max_bytes", default=10 * 1024 * 1024, low=4096, high=2**40),
        backups=t.integer("backups", default=5, low=0, high=1000),
        fsync=t.boolean("fsync", default=False),
    )
    t.finish()
    return events, MetricsConfig(tokens=tuple(scrapers)), audit
