"""The ``[mqtt]`` section: where the bridge connects and how it names this node (README, *Home Assistant and MQTT*).

Plain data, read once at load; nothing here imports the MQTT client, so a config
without ``[mqtt]`` never needs ``pictl[mqtt]`` installed. The broker password is
never in the config: ``password_file`` names a file that holds it (mode 600), read
when the config loads, like every secret file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from controller.settings.reader import Table

NODE = re.compile(r"[A-Za-z0-9_-]{1,64}")  # Home Assistant ids allow [a-zA-Z0-9_-] only
TOPIC_LEVELS = re.compile(r"[^#+\x00/]+(?:/[^#+\x00/]+)*")  # no wildcards, no empty level, no leading/trailing /
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
MIN_PASSWORD_LENGTH = 8  # the broker password file's, as for every secret file


@dataclass(frozen=True)
class MqttConfig:
    """How the bridge reaches the broker and what it publishes there."""

    host: str  # broker address
    port: int  # broker port (1883 for mqtt://, 8883 for mqtts://)
    tls: bool  # mqtts://: TLS, certificate and host name checked
    cafile: str | None  # CA bundle for the broker's certificate; None: the system's
    username: str | None  # broker login; None: anonymous
    password: str | None = field(default=None, repr=False)  # from password_file, read at load; never logged
    node: str = "pi01"  # names this daemon on the broker and in Home Assistant
    role: str = "automation"  # the pictl role applied to everything arriving over MQTT
    topic_prefix: str = "pictl"  # topics are PREFIX/NODE/...
    discovery_prefix: str = "homeassistant"  # "" turns Home Assistant discovery off
    keepalive: int = 30  # seconds; the broker publishes the last will after about 1.5x this of silence
    backoff_max: float = 10.0  # cap on the reconnect delay, which doubles from 0.1 s


def read_mqtt(t: Table | None, roles: frozenset[str], base: str) -> MqttConfig | None:
    """Validate ``[mqtt]`` (None when absent or invalid; problems go to the table's document).

    *roles* are the configured role names, *base* the config file's directory
    (relative file names are resolved against it).
    """
    if t is None:
        return None
    problems_before = len(t.doc.problems)
    url = t.string("url")
    node = t.string("node")
    role = t.string("role")
    prefix = t.string("topic_prefix", default="pictl")
    discovery = t.string("discovery_prefix", default="homeassistant")
    username = t.string("username", default=None)
    password_given = t.has("password_file")
    password = t.secret_file("password_file", minimum=MIN_PASSWORD_LENGTH)
    cafile = _file(t, "cafile", base)
    keepalive = t.integer("keepalive", default=30, low=5, high=3600)
    backoff_max = t.number("backoff_max", default=10.0, high=3600.0)
    t.finish()
    where = _broker(t, url) if url is not None else None
    if node is not None and not NODE.fullmatch(node):
        t.problem("node", "must be 1-64 characters of A-Z, a-z, 0-9, _ and - (Home Assistant ids)")
        node = None
    if role is not None and role not in roles:
        t.problem("role", f"no role {role!r} in [auth.roles]")
        role = None
    if prefix is not None and not TOPIC_LEVELS.fullmatch(prefix):
        t.problem("topic_prefix", "must be a topic without wildcards (+ #) or empty levels, e.g. \"pictl\"")
        prefix = None
    if discovery and not TOPIC_LEVELS.fullmatch(discovery):
        t.problem("discovery_prefix", 'must be a topic without wildcards, or "" to turn discovery off')
        discovery = None
    if password_given and username is None:
        t.problem("password_file", "goes with username")
    if where is not None and cafile is not None and not where[2]:
        t.problem("cafile", "only used with an mqtts:// url")
    if len(t.doc.problems) > problems_before:
        return None
    assert where is not None
    host, port, tls = where
    return MqttConfig(host=host, port=port, tls=tls, cafile=cafile, username=username,
                      password=password, node=node, role=role, topic_prefix=prefix,
                      discovery_prefix=discovery, keepalive=keepalive, backoff_max=backoff_max)


def _broker(t: Table, url: str) -> tuple[str, int, bool] | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        t.problem("url", f"not a broker url: {exc}")
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        t.problem("url", 'must look like "mqtt://HOST[:PORT]" or "mqtts://HOST[:PORT]"')
        return None
    if parts.username is not None or parts.password is not None:
        t.problem("url", "put no credentials in the url: use username and password_file")
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        t.problem("url", "a broker url has no path, query or fragment")
        return None
    return parts.hostname, port or DEFAULT_PORTS[parts.scheme], parts.scheme == "mqtts"


def _file(t: Table, key: str, base: str) -> str | None:
    name = t.string(key, default=None)
    if not name:
        return None
    path = os.path.join(base, os.path.expanduser(name))
    if not os.path.isfile(path):
        t.problem(key, f"no such file: {path}")
        return None
    return path


class MqttUnusable(RuntimeError):
    """The bridge cannot start: the MQTT extra is not installed."""


