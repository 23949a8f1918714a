"""The front door under attack (issues 12 and 17): the client address behind a trusted proxy,
requests judged once up front (400 / 421 / 401, never a 500 or a traceback), cheap failed logins,
and every refusal counted and logged without flooding the log."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.datastructures import Headers
from websockets.http11 import Request

from controller.http.guard import Front, Guard, Refusal, split_host
from controller.http.peer import ForwardingError, TrustedProxies, parse_address
from controller.http.refusals import RefusalLog
from controller.rpc.metrics import Metrics
from controller.security.auth import Authenticator
from controller.security.policy import LockoutConfig, Role, Token
from controller.security.secrets import digest_secret, hash_secret
from controller.service import configfile as config
from controller.service.daemon import Daemon
from tests.conftest import TIME_SCALE, Client, open_client, raw_http
from tests.test_security import SECRETS, security_config

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # a valid Sec-WebSocket-Key
UPGRADE = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", KEY),
           ("Sec-WebSocket-Version", "13")]
FRONT = 'trusted_proxies = ["127.0.0.1"]\nallowed_hosts = ["pictl.example"]'


@pytest.fixture
def slowdown_after() -> int:
    return 4  # security_config's: no failure is answered late before the lockout


@pytest.fixture
async def front(tmp_path: Path, slowdown_after: int):
    path = tmp_path / "front.toml"
    path.write_text(security_config(FRONT, slowdown_after=slowdown_after))
    daemon = Daemon(config.load(str(path)), simulate=True, time_scale=TIME_SCALE)
    await daemon.start()
    yield daemon
    await daemon.stop()


def port_of(daemon: Daemon) -> int:
    assert daemon.server is not None
    return daemon.server.port


def sample(daemon: Daemon, name: str, **labels: str) -> float:
    text, _ = daemon.ctx.metrics.render(None)
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise AssertionError(f"no sample {name} {labels}")


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not bad, [r.getMessage() for r in bad]


# -- the client address --------------------------------------------------------------------------

def forwarded(*pairs: tuple[str, str]) -> Headers:
    return Headers(list(pairs))


@pytest.mark.parametrize(("remote", "headers", "address", "via"), [
    # Not a trusted proxy: its forwarding headers are ignored, whatever they say (spoofing).
    (("192.168.1.9", 4000), [("X-Forwarded-For", "10.0.0.1")], "192.168.1.9", None),
    (("192.168.1.9", 4000), [("X-Real-IP", "10.0.0.1")], "192.168.1.9", None),
    # A trusted proxy: the right-most entry it does not itself vouch for.
    (("127.0.0.1", 5000), [("X-Forwarded-For", "6.6.6.6, 192.168.1.20")], "192.168.1.20", "127.0.0.1:5000"),
    (("127.0.0.1", 5000), [("X-Forwarded-For", "192.168.1.20, 127.0.0.1")], "192.168.1.20", "127.0.0.1:5000"),
    # HAProxy adds its own line: repeated headers are one list, in order.
    (("127.0.0.1", 5000), [("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "192.168.1.21")],
     "192.168.1.21", "127.0.0.1:5000"),
    # Ports, brackets and IPv4-mapped IPv6 are read as the address they are.
    (("127.0.0.1", 5000), [("X-Forwarded-For", "[2001:db8::7]:443")], "2001:db8::7", "127.0.0.1:5000"),
    (("::ffff:127.0.0.1", 5000, 0, 0), [("X-Forwarded-For", "192.168.1.22:5555")], "192.168.1.22",
     "127.0.0.1:5000"),
    # Everything trusted (a client on the proxy's own machine): the left-most.
    (("127.0.0.1", 5000), [("X-Forwarded-For", "127.0.0.1")], "127.0.0.1", "127.0.0.1:5000"),
    # No X-Forwarded-For: X-Real-IP; neither: the proxy itself (a health check).
    (("127.0.0.1", 5000), [("X-Real-IP", "192.168.1.23")], "192.168.1.23", "127.0.0.1:5000"),
    (("127.0.0.1", 5000), [], "127.0.0.1", None),
])
def test_client_address(remote: tuple, headers: list[tuple[str, str]], address: str, via: str | None) -> None:
    client = TrustedProxies(["127.0.0.0/8", "::1"]).client(remote, forwarded(*headers))
    assert (client.address, client.via) == (address, via)


@pytest.mark.parametrize("headers", [[("X-Forwarded-For", "192.168.1.5, unknown")],
                                     [("X-Real-IP", "somebody")],
                                     [("X-Real-IP", "1.2.3.4"), ("X-Real-IP", "1.2.3.5")]])
def test_unreadable_forwarding_from_a_trusted_proxy_is_refused(headers: list[tuple[str, str]]) -> None:
    with pytest.raises(ForwardingError):
        TrustedProxies(["127.0.0.1"]).client(("127.0.0.1", 1), forwarded(*headers))


def test_parse_address() -> None:
    assert str(parse_address(" 10.1.2.3:80 ")) == "10.1.2.3"
    assert parse_address("evil.example") is None and parse_address("") is None


@pytest.mark.parametrize(("value", "parts"), [
    ("pictl.example:8765", ("pictl.example", "8765")), ("LOCALHOST", ("localhost", None)),
    ("[::1]:80", ("::1", "80")), ("10.0.0.2", ("10.0.0.2", None)), ("host.:1", ("host", "1")),
    ("", None), ("a b", None), ("user@host", None), ("host:port", None), ("[zz]:1", None), ("h/x", None),
    ("\xe9vil.example", None),
])
def test_split_host(value: str, parts: tuple[str, str | None] | None) -> None:
    assert split_host(value) == parts


def judge(headers: list[tuple[str, str]], path: str = "/ws", remote: tuple = ("192.168.1.9", 1),
          **guard: object) -> Front | Refusal:
    return Guard(**guard).inspect(remote, Request(path, Headers(headers)))  # type: ignore[arg-type]


def test_allowed_hosts_default_and_configured() -> None:
    import socket

    short = socket.gethostname().lower().partition(".")[0]
    for host in ("192.168.1.40:8765", "[fe80::1]", "localhost:8765", short, f"{short}.local", "pictl.lan"):
        assert isinstance(judge([("Host", host)], allowed_hosts=["pictl.lan"]), Front), host
    refused = judge([("Host", "evil.example:8765"), ("Origin", "http://evil.example:8765")])
    assert isinstance(refused, Refusal) and refused.status == 421


def test_forwarded_proto_from_a_trusted_proxy_sets_the_own_origin() -> None:
    headers = [("Host", "localhost"), ("X-Forwarded-Proto", "https"), ("X-Forwarded-For", "10.0.0.9")]
    trusted = judge(headers, remote=("127.0.0.1", 1), trusted_proxies=["127.0.0.1"])
    assert isinstance(trusted, Front) and trusted.own_origin == "https://localhost"
    direct = judge(headers)
    assert isinstance(direct, Front) and direct.own_origin == "http://localhost"


# -- requests judged up front, through a real socket ---------------------------------------------

SWEEP = [
    # (path, header lines, status)
    ("/ws", [("Host", "127.0.0.1"), ("Host", "127.0.0.1"), *UPGRADE], 400),
    ("/ws", [("Host", "127.0.0.1"), ("Origin", "https://panel.example"), ("Origin", "http://evil.example"),
             *UPGRADE], 400),
    ("/ws", [("Host", "127.0.0.1"), ("Authorization", f"Bearer {SECRETS['root']}"),
             ("Authorization", f"Bearer {SECRETS['root']}"), *UPGRADE], 400),
    ("/ws", [("Host", "127.0.0.1"), *UPGRADE, ("Sec-WebSocket-Key", KEY)], 400),
    ("/metrics", [("Host", "127.0.0.1"), ("authorization", "x"), ("AUTHORIZATION", "y")], 400),
    ("/", [("Host", "127.0.0.1"), ("host", "evil.example")], 400),
    ("/ws", [*UPGRADE], 400),  # no Host
    ("/ws", [("Host", "a b"), *UPGRADE], 400),
    ("/ws", [("Host", "127.0.0.1"), ("Authorization", "Basic dXNlcjpwYXNz"), *UPGRADE], 401),
    ("/ws", [("Host", "127.0.0.1"), ("Authorization", "Bearer"), *UPGRADE], 401),
    ("/ws", [("Host", "127.0.0.1"), ("Authorization", "Bearer caf\xe9"), *UPGRADE], 401),
    ("/metrics", [("Host", "127.0.0.1"), ("Authorization", "Token abc")], 401),
    # DNS rebinding: a name the daemon does not know, on every route.
    ("/ws", [("Host", "evil.example:8765"), ("Origin", "http://evil.example:8765"), *UPGRADE], 421),
    ("/", [("Host", "evil.example:8765")], 421),
    ("/healthz", [("Host", "evil.example")], 421),
    ("/metrics", [("Host", "evil.example")], 421),
    ("/panel.js", [("Host", "evil.example")], 421),
    # Lists that may repeat are not refused.
    ("/", [("Host", "127.0.0.1"), ("If-None-Match", '"a"'), ("If-None-Match", '"b"')], 200),
    ("/healthz", [("Host", "pictl.example"), ("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-For", "5.6.7.8")], 200),
    ("/ws", [("Host", "localhost"), ("Authorization", f"Bearer {SECRETS['root']}"), *UPGRADE], 101),
]


async def test_bad_requests_get_a_clear_4xx_and_one_log_line(front: Daemon,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    for path, headers, status in SWEEP:
        got, _, body = await raw_http(port_of(front), path, headers)
        assert got == status, (path, headers, got, body)
        if status >= 400:
            assert json.loads(body)["error"]  # says what is wrong
    no_tracebacks(caplog)
    assert sample(front, "pictl_ws_refused_total", reason="bad_request") == 6
    assert sample(front, "pictl_ws_refused_total", reason="misdirected") == 1
    assert sample(front, "pictl_http_refused_total", reason="misdirected") == 4
    assert sample(front, "pictl_ws_refused_total", reason="unauthorized") == 3


async def test_a_rebinding_page_cannot_use_its_own_origin(front: Daemon) -> None:
    port = port_of(front)
    status, _, _ = await raw_http(port, "/ws", [("Host", f"evil.example:{port}"),
                                                ("Origin", f"http://evil.example:{port}"), *UPGRADE])
    assert status == 421
    # The same page on a name the daemon answers to is its own origin, as before.
    status, _, _ = await raw_http(port, "/ws", [("Host", f"pictl.example:{port}"),
                                                ("Origin", f"http://pictl.example:{port}"), *UPGRADE])
    assert status == 101


# -- the client address drives the per-address rules ---------------------------------------------

async def test_forwarded_headers_from_a_client_are_ignored(front: Daemon) -> None:
    port = port_of(front)
    spoof = [("Host", "127.0.0.1"), ("X-Forwarded-For", "10.9.9.9"), ("X-Real-IP", "10.9.9.9"), *UPGRADE,
             ("Authorization", "Bearer wrong-secret")]
    for _ in range(4):  # lockout_after = 4
        status, _, _ = await raw_http(port, "/ws", spoof, local_addr=("127.0.0.22", 0))
        assert status == 401
    auth = front.ctx.auth
    assert auth.locked_for("127.0.0.22") > 0 and auth.locked_for("10.9.9.9") == 0


async def test_behind_a_trusted_proxy_each_client_has_its_own_lockout_and_cap(front: Daemon) -> None:
    port = port_of(front)

    def via_proxy(client: str, secret: str) -> list[tuple[str, str]]:
        return [("Host", "pictl.example"), ("X-Forwarded-For", f"6.6.6.6, {client}"), *UPGRADE,
                ("Authorization", f"Bearer {secret}")]

    statuses = [(await raw_http(port, "/ws", via_proxy("192.168.1.50", "wrong-secret")))[0] for _ in range(5)]
    assert statuses == [401, 401, 401, 401, 429]  # the guesser is locked out...
    async with open_client(front.url, SECRETS["root"],
                           additional_headers={"X-Forwarded-For": "192.168.1.51"}) as ws:  # ...nobody else
        assert await Client(ws).call("system.ping") == {"pong": True}
    # Connections per address (4) count per client too.
    clients = [await open_client(front.url, SECRETS["viewer"], additional_headers={"X-Forwarded-For": "192.168.1.52"})
               for _ in range(4)]
    status, _, _ = await raw_http(port, "/ws", via_proxy("192.168.1.52", SECRETS["viewer"]))
    assert status == 429
    status, _, _ = await raw_http(port, "/ws", via_proxy("192.168.1.53", SECRETS["viewer"]))
    assert status == 101
    for ws in clients:
        await ws.close()
    assert sample(front, "pictl_ws_refused_total", reason="locked_out") == 1
    assert sample(front, "pictl_ws_refused_total", reason="too_many_from_address") == 1


async def test_the_audit_trail_names_the_client_and_the_proxy(front: Daemon, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="controller.security.audit")
    async with open_client(front.url, SECRETS["root"], additional_headers={"X-Forwarded-For": "192.168.1.60"}) as ws:
        await Client(ws).call("light.on")
    entry = json.loads(next(r.getMessage() for r in caplog.records if r.getMessage().startswith("audit "))[6:])
    assert entry["peer"] == "192.168.1.60" and entry["via"].startswith("127.0.0.1:")


# -- failed logins stay cheap and bounded --------------------------------------------------------

async def test_300_bad_handshakes_from_30_addresses_leave_a_valid_client_served(front: Daemon) -> None:
    port = port_of(front)
    async with open_client(front.url, SECRETS["root"]) as ws:
        client = Client(ws)

        async def guesses(n: int) -> list[int | None]:
            headers = [("Host", "127.0.0.1"), *UPGRADE, ("Authorization", f"Bearer guess-{n}")]
            return [(await raw_http(port, "/ws", headers, local_addr=(f"127.0.1.{n}", 0)))[0] for _ in range(10)]

        attack = asyncio.gather(*(guesses(n) for n in range(1, 31)))
        pings = 0
        while not attack.done():
            assert await client.call("system.ping", timeout=2.0) == {"pong": True}  # promptly, all along
            pings += 1
        statuses = [s for per_address in attack.result() for s in per_address]
    assert pings >= 1 and len(statuses) == 300
    assert set(statuses) <= {401, 429} and statuses.count(429) == 30 * 6  # locked after 4 failures each
    assert front.ctx.auth.lockouts == 30


async def test_concurrent_guesses_from_one_address_check_no_more_than_the_lockout_allows() -> None:
    # One token in the old PBKDF2 format: each check there is slow, so concurrency used to multiply it.
    auth = Authenticator((Token("old", "r", hash_secret("old-secret-123", iterations=1000)),
                          Token("new", "r", digest_secret("new-secret-123"))),
                         {"r": Role("r", ("*",))}, LockoutConfig(slowdown_after=100, lockout_after=4, lockout_s=60))
    verdicts = await asyncio.gather(*(auth.attempt("10.0.0.1", f"guess-{i}") for i in range(30)))
    assert auth.slow_checks == 4  # the lockout slots were taken before any check
    assert sum(1 for v in verdicts if v.locked_s) == 26 and not any(v.ok for v in verdicts)
    assert (await auth.attempt("10.0.0.2", "new-secret-123")).ok  # another address, the fast path
    assert (await auth.attempt("10.0.0.2", "old-secret-123")).ok
    assert auth.slow_checks == 5
    auth.close()


async def test_a_wrong_secret_never_runs_a_slow_hash_when_tokens_are_digests() -> None:
    tokens = tuple(Token(f"t{i}", "r", digest_secret(f"secret-number-{i}")) for i in range(1000))
    auth = Authenticator(tokens, {"r": Role("r", ("*",))}, LockoutConfig(slowdown_after=10_000, lockout_after=10_000))
    for i in range(200):
        assert not (await auth.attempt("10.0.0.1", f"wrong-{i}")).ok
    assert (await auth.attempt("10.0.0.1", "secret-number-999")).token == tokens[999]
    assert auth.slow_checks == 0


@pytest.mark.parametrize("slowdown_after", [2])
async def test_session_auth_is_refused_in_a_batch_and_while_one_is_pending(front: Daemon) -> None:
    client = Client(await open_client(front.url, None))
    batch = [{"jsonrpc": "2.0", "id": i, "method": "session.auth", "params": {"token": f"guess-{i}"}}
             for i in range(3)]
    replies = await client.raw(json.dumps(batch))
    assert [r["error"]["code"] for r in replies] == [-32600] * 3
    assert front.ctx.auth.locked_for("127.0.0.1") == 0 and not front.ctx.auth._failures
    # Past slowdown_after (2) a failure is answered late: a second session.auth meanwhile is refused.
    for _ in range(2):
        assert (await client.error("session.auth", {"token": "wrong"}))["code"] == -32001
    slow = asyncio.create_task(client.error("session.auth", {"token": "wrong"}))
    await asyncio.sleep(0)  # let it be sent first
    second = await client.error("session.auth", {"token": SECRETS["root"]})
    assert second["code"] == -32600 and "already" in second["message"]
    assert (await slow)["code"] == -32001
    await client.close()


async def test_metrics_bearer_failures_count_and_lock_out(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text(security_config(FRONT) + '\n[metrics]\ntokens = ["viewer"]\n')
    daemon = Daemon(config.load(str(path)), simulate=True, time_scale=TIME_SCALE)
    await daemon.start()
    try:
        port = port_of(daemon)
        statuses = [(await raw_http(port, "/metrics", [("Host", "127.0.0.1"), ("Authorization", "Bearer nope")],
                                    local_addr=("127.0.0.31", 0)))[0] for _ in range(5)]
        assert statuses == [401, 401, 401, 401, 429]
        status, _, _ = await raw_http(port, "/metrics", [("Host", "127.0.0.1"),
                                                         ("Authorization", f"Bearer {SECRETS['viewer']}")],
                                      local_addr=("127.0.0.31", 0))
        assert status == 429  # locked out, like any other login from there
        assert daemon.ctx.auth.lockouts == 1
        assert sample(daemon, "pictl_http_refused_total", reason="locked_out") == 2
    finally:
        await daemon.stop()


# -- refusals are logged without flooding --------------------------------------------------------

async def test_refusals_log_one_line_per_reason_per_window_with_the_count(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="controller.http.refusals")
    metrics = Metrics()
    refusals = RefusalLog(metrics.ws_refused, "handshake", window_s=0.2)
    for i in range(50):
        refusals.refused("origin", f"10.0.0.{i}", "origin not allowed")
    refusals.refused("unauthorized", "10.0.0.99", "bad bearer token")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "10.0.0.0" in lines[0] and "10.0.0.99" in lines[1]
    async with asyncio.timeout(5):  # the window closes: one line with the count
        while not any("49 more" in r.getMessage() for r in caplog.records):
            await asyncio.sleep(0.05)
    assert "latest from 10.0.0.49" in caplog.records[-1].getMessage() and len(caplog.records) == 3
    assert metrics.ws_refused.labels("origin")._value.get() == 50
    refusals.close()


async def test_a_reload_applies_allowed_hosts_and_trusted_proxies_at_once(tmp_path: Path) -> None:
    path = tmp_path / "front.toml"
    path.write_text(security_config(FRONT))
    daemon = Daemon(config.load(str(path)), simulate=True, time_scale=TIME_SCALE)
    await daemon.start()
    try:
        port = port_of(daemon)

        async def status(host: str) -> int | None:
            return (await raw_http(port, "/healthz", [("Host", host), ("X-Forwarded-For", "10.7.7.7")]))[0]

        assert (await status("pictl.example"), await status("other.example")) == (200, 421)
        path.write_text(security_config('trusted_proxies = ["10.0.0.0/8"]\nallowed_hosts = ["other.example"]'))
        plan = await daemon.reload()
        assert plan is not None and {"server.allowed_hosts", "server.trusted_proxies"} <= set(plan.server_changed)
        assert (await status("pictl.example"), await status("other.example")) == (421, 200)
        # 127.0.0.1 is no longer a trusted proxy: its X-Forwarded-For no longer names the client.
        assert daemon.server is not None
        assert daemon.server.guard.proxies.client(("127.0.0.1", 1), Headers([("X-Forwarded-For", "10.7.7.7")])) \
            .address == "127.0.0.1"
    finally:
        await daemon.stop()
