"""The HTTP front under hypothesis (issue 17): raw requests over real sockets to a live daemon.

Random header sets around a real handshake: singleton headers missing, repeated or sent in odd
casing, overlong and non-ASCII values, upgrade fields missing or repeated, forwarding headers,
tokens right, wrong and malformed, on every route. Invariants: every request gets an answer and
it is never a 5xx; a 101 only on /ws, and only without a token or with a valid one; nothing is
logged with a traceback; no output moves; the daemon keeps serving.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import socket
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect

from controller.service import configfile as config
from tests.test_front import FRONT, KEY
from tests.test_fuzz import Served, serve_in_thread
from tests.test_security import SECRETS, security_config

VALID = f"Bearer {SECRETS['viewer']}"
# RFC 7235: the scheme is case-insensitive and one or more spaces follow it ("bearer  <secret>" is good)
GOOD_CREDENTIALS = re.compile(f"(?i:bearer) +{re.escape(SECRETS['viewer'])} *")
ROUTES = ["/ws", "/ws?x=1", "/", "/healthz", "/metrics", "/panel.js", "/nope", "//ws", "/ws/"]

token_chars = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
header_names = st.sampled_from(["X-Custom", "Accept", "Cookie", "User-Agent", "Sec-WebSocket-Extensions",
                                "Sec-WebSocket-Protocol", "If-None-Match", "Forwarded"]) \
    | st.text(token_chars, min_size=1, max_size=30)
# What websockets accepts in a field value: tab, visible ASCII, space, and obs-text (0x80-0xff).
values = st.text(st.sampled_from("\t !\"#$%&'()*+,-./09:;<=>?@AZ[\\]^_`az{|}~\x80\xa0\xe9\xff"), max_size=60)
overlong = st.integers(100, 10_000).map(lambda n: "a" * n)


def odd_case(draw: Any, name: str) -> str:
    mode = draw(st.sampled_from(["as is", "lower", "upper", "swap"]))
    return {"as is": name, "lower": name.lower(), "upper": name.upper(), "swap": name.swapcase()}[mode]


@st.composite
def requests(draw: Any, port: int) -> tuple[str, list[tuple[str, str]], bool]:
    """A valid handshake or plain GET, then 0-4 mutations; returns (path, header lines, whether
    Authorization is absent or valid)."""
    path = draw(st.sampled_from(ROUTES))
    odd: dict[str, Any] = {
        "Host": st.sampled_from([f"127.0.0.1:{port}", "localhost", "pictl.example", "evil.example", "",
                                 "[::1]:1", "a b", "pictl.example.", "\xe9vil.example"]) | overlong,
        "Upgrade": st.sampled_from(["websocket", "WebSocket", "h2c", ""]),
        "Connection": st.sampled_from(["Upgrade", "keep-alive, Upgrade", "close", ""]),
        "Sec-WebSocket-Key": st.sampled_from([KEY, "short", ""]) | values,
        "Sec-WebSocket-Version": st.sampled_from(["13", "8", "x"]),
        "Origin": st.sampled_from([f"http://127.0.0.1:{port}", "https://panel.example", "http://evil.example",
                                   "null", f"http://evil.example:{port}"]) | values,
        "Authorization": st.sampled_from([VALID, "Bearer wrong-secret", "Basic dXNlcjpwYXNz", "Bearer",
                                          "bearer  " + SECRETS["viewer"], "Bearer caf\xe9"]) | values,
        "X-Forwarded-For": st.sampled_from(["192.168.7.1", "1.2.3.4, 10.0.0.1", "unknown", "[::1]:4"]) | values,
        "X-Real-IP": st.sampled_from(["192.168.7.2", "nobody"]) | values,
        "X-Forwarded-Proto": st.sampled_from(["https", "gopher"]),
    }
    lines = [("Host", draw(st.sampled_from([f"127.0.0.1:{port}", "localhost", "pictl.example"])))]
    if draw(st.booleans()):
        lines += [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", KEY),
                  ("Sec-WebSocket-Version", "13")]
    if draw(st.booleans()):
        lines.append(("Authorization", VALID))
    for _ in range(draw(st.integers(0, 4))):
        mutation = draw(st.sampled_from(["drop", "repeat", "replace", "case", "add", "extra"]))
        if mutation == "extra" or not lines:
            lines.append((draw(header_names), draw(values | overlong)))
            continue
        i = draw(st.integers(0, len(lines) - 1))
        name, value = lines[i]
        if mutation == "drop":
            del lines[i]
        elif mutation == "repeat":
            again = value if draw(st.booleans()) or name not in odd else draw(odd[name])
            lines.insert(draw(st.integers(0, len(lines))), (odd_case(draw, name), again))
        elif mutation == "replace" and name in odd:
            lines[i] = (name, draw(odd[name]))
        elif mutation == "case":
            lines[i] = (odd_case(draw, name), value)
        else:
            extra = draw(st.sampled_from(sorted(odd)))
            lines.append((odd_case(draw, extra), draw(odd[extra])))
    auth = [v for k, v in lines if k.lower() == "authorization"]
    return path, lines, not auth or (len(auth) == 1 and bool(GOOD_CREDENTIALS.fullmatch(auth[0])))


def raw(port: int, path: str, lines: list[tuple[str, str]], source: str) -> tuple[int | None, bytes]:
    """Send one request, return (status or None if closed unanswered, head bytes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\n".encode() + b"".join(
            f"{k}: {v}\r\n".encode("latin-1") for k, v in lines) + b"\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    if not data:
        return None, b""
    return int(data.split(b" ", 2)[1]), data.partition(b"\r\n\r\n")[0]


@pytest.fixture
def front_served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    path: Path = tmp_path_factory.mktemp("httpfuzz") / "front.toml"
    path.write_text(security_config(FRONT))
    yield from serve_in_thread(config.load(str(path)))


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def log_records() -> Iterator[Records]:
    handler = Records()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


@pytest.mark.long
def test_no_request_gets_a_5xx_or_a_traceback_and_the_daemon_serves_after(front_served: Served,
                                                                          log_records: Records) -> None:
    """The fuzz, then the after-check on what it left: one test, so that neither needs the other's leftovers."""
    assert front_served.daemon.server is not None
    port = front_served.daemon.server.port
    runs: Counter[str] = Counter()
    sources = itertools.count()  # each example from its own loopback address: lockouts stay per example

    @settings(max_examples=1000, deadline=None)
    @given(data=st.data())
    def one_request(data: Any) -> None:
        path, lines, token_ok = data.draw(requests(port))
        n = next(sources)
        # Mostly clients of their own; some through the trusted proxy address, whose X-Forwarded-For counts.
        source = "127.0.0.1" if data.draw(st.integers(0, 3)) == 0 else f"127.3.{n // 250 % 250}.{n % 250 + 1}"
        before = front_served.relay_changes()
        status, head = raw(port, path, lines, source)
        runs["http"] += 1
        runs[f"http {status}"] += 1
        assert status is not None, (path, lines)  # every well-formed request gets an answer
        assert status < 500, (path, lines, head)
        if status == 101:
            assert path.partition("?")[0] == "/ws" and token_ok, (path, lines)
        assert front_served.relay_changes() == before

    one_request()
    # From an address of its own: the fuzz's wrong tokens from 127.0.0.1 may rightly have locked that one out.
    with connect(front_served.daemon.url, additional_headers={"Authorization": VALID}, compression=None,
                 source_address=("127.9.9.9", 0)) as ws:
        ws.send('{"jsonrpc":"2.0","id":1,"method":"system.ping"}')
        assert json.loads(ws.recv(timeout=10))["result"] == {"pong": True}
    bad = [r.getMessage() for r in log_records.records if r.exc_info or "Traceback" in r.getMessage()
           or r.levelno >= logging.ERROR]
    assert not bad, bad[:5]
    assert SECRETS["viewer"] not in "\n".join(r.getMessage() for r in log_records.records)
    assert runs["http"] >= 1
    print(f"\nHTTP fuzz examples run: {dict(sorted(runs.items()))}")
