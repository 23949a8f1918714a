"""Who may open the door (issue 5): tokens, roles, origins, lockouts, limits, TLS, at-most-once."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from controller.security.auth import role_allows
from controller.security.policy import Role
from controller.security.secrets import digest_secret
from controller.service import configfile as config
from controller.service.daemon import Daemon
from tests.conftest import DOOR_TIMEOUT_S, LIGHT_TIMEOUT_S, NEW_KEY, TIME_SCALE, Client, open_client

SECRETS = {"root": "root-secret-1", "panel": "panel-secret-1", "viewer": "viewer-secret", "limited": "limited-sec"}


def security_config(extra_server: str = "", tmp: Path | None = None, *, auth_timeout: float = 1.0,
                    slowdown_after: int = 4) -> str:
    """Four tokens and roles on the demo's door and light. Failed authentications lock an address out
    at the 4th; by default no answer is slowed down before that (a test of the slowdown asks for it)."""
    tokens = "\n".join(
        f'[auth.tokens.{name}]\nrole = "{"admin" if name == "root" else name}"\n'
        f'hash = "{digest_secret(secret)}"\n'
        for name, secret in SECRETS.items()
    )
    return f"""
[server]
listen = "127.0.0.1:0"
auth_timeout = {auth_timeout}
max_connections_per_address = 4
allowed_origins = ["https://panel.example"]
{extra_server}

[auth]
slowdown_after = {slowdown_after}
lockout_after = 4
lockout_s = 30

[auth.roles.admin]
allow = ["*"]

[auth.roles.panel]
allow = ["door.*", "light.*", "*.state", "system.*", "events.*"]
rate = 20
burst = 40

[auth.roles.viewer]
allow = ["system.*", "events.*", "*.state"]

[auth.roles.limited]
allow = ["*"]
deny = ["door.open", "sim.*"]

{tokens}

[devices.door]
kind = "door"
relay = {{ gpio = 17 }}
contact = {{ gpio = 27, pull = "up" }}
timeout = {DOOR_TIMEOUT_S}

[devices.light]
kind = "switch"
output = {{ gpio = 22 }}
feedback = {{ gpio = 23, pull = "down" }}
timeout = {LIGHT_TIMEOUT_S}
"""


@pytest.fixture
def auth_timeout() -> float:
    return 1.0


@pytest.fixture
def slowdown_after() -> int:
    return 4


@pytest.fixture
async def secure(tmp_path: Path, auth_timeout: float, slowdown_after: int):
    path = tmp_path / "secure.toml"
    path.write_text(security_config(auth_timeout=auth_timeout, slowdown_after=slowdown_after))
    daemon = Daemon(config.load(str(path)), simulate=True, time_scale=TIME_SCALE)
    await daemon.start()
    yield daemon
    await daemon.stop()


def pin_changes(daemon: Daemon, pin: int) -> int:
    assert daemon.plant is not None
    return len(daemon.plant.gpio_factory.pin(pin).states)


async def connected(daemon: Daemon, who: str | None, **kwargs: Any) -> Client:
    ws = await open_client(daemon.url, SECRETS[who] if who else None, **kwargs)
    return Client(ws)


# -- roles ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("allow", "deny", "method", "allowed"), [
    (("*",), (), "door.open", True),
    ((), (), "door.open", False),  # deny by default
    (("door.*",), ("door.open",), "door.open", False),  # the more specific deny wins
    (("door.*",), ("door.open",), "door.close", True),
    (("door.open",), ("door.*",), "door.open", True),  # the more specific allow wins
    (("door.*",), ("door.*",), "door.close", False),  # a tie denies
    (("*.state",), (), "light.state", True),
    (("*.state",), (), "light.on", False),
])
def test_most_specific_pattern_decides(allow, deny, method, allowed) -> None:
    assert role_allows(Role("r", allow, deny), method) is allowed


async def test_deny_rules_are_enforced_on_every_call_and_batch_member(secure: Daemon) -> None:
    client = await connected(secure, "limited")
    refused = await client.error("door.open")
    assert refused["code"] == -32001 and refused["data"] == {"method": "door.open"}
    batch = [{"jsonrpc": "2.0", "id": 1, "method": "light.on"},
             {"jsonrpc": "2.0", "id": 2, "method": "door.open"},
             {"jsonrpc": "2.0", "id": 3, "method": "sim.fault", "params": {"device": "door", "fault": "jammed"}}]
    replies = {r["id"]: r for r in await client.raw(json.dumps(batch))}
    assert replies[1]["result"]["state"] == "on"
    assert replies[2]["error"]["code"] == -32001 and replies[3]["error"]["code"] == -32001
    assert pin_changes(secure, 17) == 1  # the door relay never moved
    assert secure.plant is not None and secure.plant.active_faults("door") == []
    await client.close()


async def test_sim_methods_are_for_admin_only(secure: Daemon) -> None:
    viewer = await connected(secure, "viewer")
    assert (await viewer.error("sim.fault", {"device": "door", "fault": "jammed"}))["code"] == -32001
    assert (await viewer.error("door.open"))["code"] == -32001
    assert (await viewer.call("door.state"))["state"] == "closed"
    await viewer.close()


async def test_sim_methods_do_not_exist_without_simulation(secure: Daemon) -> None:
    from controller.runtime.context import build_context

    assert secure.ctx is not None and secure.ctx.dispatcher.entry("sim.fault") is not None
    plain = build_context(secure.config)  # what a daemon on hardware starts from: no simulation methods
    plain.serve_devices()
    assert not [name for name in plain.dispatcher.names() if name.startswith("sim.")]


# -- authentication ------------------------------------------------------------------------------

async def test_browser_style_session_auth_with_own_and_allowed_origins(secure: Daemon) -> None:
    port = secure.server.port if secure.server else 0
    for origin in (f"http://127.0.0.1:{port}", "https://panel.example"):
        client = await connected(secure, None, origin=origin)
        assert (await client.error("system.ping"))["code"] == -32001
        assert await client.call("session.auth", {"token": SECRETS["panel"]}) == {"role": "panel"}
        assert await client.call("system.ping") == {"pong": True}
        again = await client.error("session.auth", {"token": SECRETS["root"]})
        assert again["code"] == -32602  # no switching identity on a live connection
        await client.close()


async def test_foreign_origin_is_refused_whatever_the_token(secure: Daemon) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await open_client(secure.url, SECRETS["root"], origin="https://evil.example")
    assert refused.value.response.status_code == 403


@pytest.mark.parametrize("auth_timeout", [0.2])
async def test_silent_connection_is_closed_after_the_auth_timeout(secure: Daemon) -> None:
    async with open_client(secure.url, None) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(5):
                await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert closed.value.rcvd.reason == "authentication timeout"


@pytest.mark.parametrize("auth_timeout", [0.2])
async def test_an_authenticated_connection_is_not_closed(secure: Daemon, auth_timeout: float) -> None:
    client = await connected(secure, None)
    await client.call("session.auth", {"token": SECRETS["viewer"]})
    closed = asyncio.ensure_future(client.ws.wait_closed())
    done, _ = await asyncio.wait({closed}, timeout=1.5 * auth_timeout)  # past the auth timeout
    assert not done
    assert await client.call("system.ping") == {"pong": True}
    closed.cancel()
    await client.close()


async def test_repeated_failures_lock_out_one_address_only(secure: Daemon) -> None:
    attacker = {"local_addr": ("127.0.0.2", 0)}
    statuses = []
    for _ in range(4):
        with pytest.raises(InvalidStatus) as refused:
            await open_client(secure.url, "wrong-secret", **attacker)
        statuses.append(refused.value.response.status_code)
    assert statuses == [401, 401, 401, 401]
    with pytest.raises(InvalidStatus) as locked:
        await open_client(secure.url, SECRETS["root"], **attacker)  # even the right token
    assert locked.value.response.status_code == 429
    assert int(locked.value.response.headers["Retry-After"]) > 0
    # session.auth from the locked address is refused too, with how long to wait.
    # (Handshakes without a token are still accepted: the lock applies to authentication.)
    with pytest.raises(InvalidStatus):
        await open_client(secure.url, SECRETS["root"], **attacker)
    # Another address is not affected.
    client = await connected(secure, "root")
    assert await client.call("system.ping") == {"pong": True}
    await client.close()
    assert secure.ctx.auth.lockouts == 1


@pytest.mark.parametrize("slowdown_after", [2])
async def test_failures_are_slowed_down_before_the_lockout(secure: Daemon) -> None:
    loop = asyncio.get_running_loop()
    times = []
    for _ in range(3):
        t = loop.time()
        with pytest.raises(InvalidStatus):
            await open_client(secure.url, "wrong-secret", local_addr=("127.0.0.3", 0))
        times.append(loop.time() - t)
    assert times[2] >= 0.2 > times[0]  # the third failure (past slowdown_after = 2) waits


async def test_session_auth_from_a_locked_address_says_when_to_retry(secure: Daemon) -> None:
    client = await connected(secure, None, local_addr=("127.0.0.6", 0))  # opened before the lockout
    for _ in range(4):
        with pytest.raises(InvalidStatus):
            await open_client(secure.url, "wrong-secret", local_addr=("127.0.0.6", 0))
    locked = await client.error("session.auth", {"token": SECRETS["root"]})
    assert locked["code"] == -32001 and locked["data"]["retry_after_s"] > 0
    await client.close()


# -- limits --------------------------------------------------------------------------------------

async def test_connections_per_address_are_limited(secure: Daemon) -> None:
    clients = [await connected(secure, "viewer", local_addr=("127.0.0.4", 0)) for _ in range(4)]
    with pytest.raises(InvalidStatus) as refused:
        await open_client(secure.url, SECRETS["viewer"], local_addr=("127.0.0.4", 0))
    assert refused.value.response.status_code == 429
    other = await connected(secure, "viewer", local_addr=("127.0.0.5", 0))
    assert await other.call("system.ping") == {"pong": True}
    await clients[0].close()
    await clients[0].ws.wait_closed()
    again = await connected(secure, "viewer", local_addr=("127.0.0.4", 0))  # a slot came free
    for c in (*clients[1:], other, again):
        await c.close()


async def test_rate_limit_answers_32005_with_retry_after(secure: Daemon) -> None:
    client = await connected(secure, "panel")
    replies = await asyncio.gather(*(client.request("system.ping") for _ in range(60)))
    limited = [r["error"] for r in replies if "error" in r]
    assert 10 <= len(limited) <= 20  # burst 40, plus what 20/s refills meanwhile
    assert all(e["code"] == -32005 and 0 < e["data"]["retry_after_s"] <= 0.05 for e in limited)
    admin = await connected(secure, "root")  # admin has no rate limit
    assert all("result" in r for r in await asyncio.gather(*(admin.request("system.ping") for _ in range(60))))
    await client.close()
    await admin.close()


async def test_oversized_batch_is_refused_whole(secure: Daemon) -> None:
    client = await connected(secure, "root")
    batch = [{"jsonrpc": "2.0", "id": i, "method": "light.toggle"} for i in range(51)]
    reply = await client.raw(json.dumps(batch))
    assert reply["error"]["code"] == -32600 and "batch too large" in reply["error"]["message"]
    assert pin_changes(secure, 22) == 1
    await client.close()


# -- at most once --------------------------------------------------------------------------------

async def test_a_retry_after_a_dropped_connection_does_not_open_twice(secure: Daemon) -> None:
    door = secure.devices["door"]
    energised = door.relay.expect(lambda v: v is True)
    call = {"jsonrpc": "2.0", "id": 1, "method": "door.open", "params": {"request_key": "panel-42"}}
    async with open_client(secure.url, SECRETS["panel"]) as ws:
        await ws.send(json.dumps(call))
        await energised.wait(2.0)  # the door is moving; the panel's Wi-Fi drops
    retry = await connected(secure, "panel")
    result = await retry.call("door.open", {"request_key": "panel-42"})
    assert result["state"] == "open" and result["changed"] is True and result["replayed"] is True
    # Once more after it finished: the same outcome, still no new actuation.
    again = await retry.call("door.open", {"request_key": "panel-42"})
    assert again["evidence"] == result["evidence"] and again["replayed"] is True
    assert pin_changes(secure, 17) == 2  # released at start, energised once
    await retry.close()


async def test_request_key_reuse_for_another_call_is_refused(secure: Daemon) -> None:
    client = await connected(secure, "root")
    await client.call("light.on", {"request_key": "k1"})
    error = await client.error("light.off", {"request_key": "k1"})
    assert error["code"] == -32602 and "different call" in error["message"]
    assert (await client.call("light.state"))["state"] == "on"
    bad = await client.error("light.off", {"request_key": "x" * 129})
    assert bad["code"] == -32602
    await client.close()


async def test_request_keys_are_per_token(secure: Daemon) -> None:
    root = await connected(secure, "root")
    panel = await connected(secure, "panel")
    first = await root.call("light.toggle", {"request_key": "same"})
    second = await panel.call("light.toggle", {"request_key": "same"})
    assert first["state"] == "on" and second["state"] == "off" and "replayed" not in second
    await root.close()
    await panel.close()


async def test_a_failed_call_is_replayed_as_the_same_failure(secure: Daemon) -> None:
    client = await connected(secure, "root")
    await client.call("sim.fault", {"device": "door", "fault": "jammed"})
    first = await client.error("door.open", {"request_key": "j", "timeout": 0.1})
    await client.call("sim.clear", {"device": "door"})
    second = await client.error("door.open", {"request_key": "j", "timeout": 0.1})
    assert first == second and first["code"] == -32002
    assert pin_changes(secure, 17) == 3  # released, energised once, released once
    await client.close()


async def test_a_busy_refusal_is_not_remembered(secure: Daemon) -> None:
    client = await connected(secure, "root")
    await client.call("sim.fault", {"device": "door", "fault": "jammed"})
    energised = secure.devices["door"].relay.expect(lambda v: v is True)
    holding = asyncio.create_task(client.request("door.open", {"timeout": 0.2}))
    await energised.wait(2.0)
    busy = await client.error("door.close", {"request_key": "b", "timeout": 0.05})
    assert busy["code"] == -32003
    await holding
    await client.call("sim.clear", {"device": "door"})
    done = await client.call("door.close", {"request_key": "b"})
    assert "replayed" not in done  # nothing had been commanded, so the retry ran
    await client.close()


# -- TLS -----------------------------------------------------------------------------------------

async def test_tls_serves_wss(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", *NEW_KEY, "-nodes", "-days", "1", "-subj",
                    "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True, timeout=60)
    path = tmp_path / "tls.toml"
    path.write_text(security_config(f'tls_cert = "{cert.name}"\ntls_key = "{key.name}"'))
    daemon = Daemon(config.load(str(path)), simulate=True, time_scale=TIME_SCALE)
    await daemon.start()
    try:
        assert daemon.url.startswith("wss://")
        context = ssl.create_default_context(cafile=str(cert))
        async with connect(daemon.url, ssl=context,
                           additional_headers={"Authorization": f"Bearer {SECRETS['viewer']}"}) as ws:
            client = Client(ws)
            assert await client.call("system.ping") == {"pong": True}
            await client.close()
        with pytest.raises((OSError, InvalidHandshake, ConnectionClosed)):
            async with connect(daemon.url.replace("wss://", "ws://"), open_timeout=3):
                pass
    finally:
        await daemon.stop()


# -- safe start ----------------------------------------------------------------------------------

async def test_outputs_start_safe_or_as_found_when_configured(tmp_path: Path) -> None:
    from gpiozero.pins.mock import MockFactory

    from controller.devices import registry as kinds
    from controller.devices.wiring import Wiring
    from drivers.gpio import GpioBus

    text = """
[devices.hall]
kind = "switch"
output = { gpio = 5 }
on_start = "keep"

[devices.porch]
kind = "switch"
output = { gpio = 6 }
"""
    cfg = config.loads(text, "keep.toml")
    factory = MockFactory()
    for pin in (5, 6):
        factory.pin(pin).drive_high()  # both lines found high (a relay left on by the last run)
    found = len(factory.pin(6).states)
    bus = GpioBus(factory)
    wiring = Wiring({bus.key: bus})
    devices = {name: kinds.build(dc, wiring) for name, dc in cfg.devices.items()}
    loop = asyncio.get_running_loop()
    for d in devices.values():
        for p in d.points:
            p.bind(loop)
        await d.start()
    assert devices["hall"].state()["state"] == "on"  # kept, and read back: the truth
    assert devices["porch"].state()["state"] == "off"  # driven to its safe level
    assert [s.state for s in factory.pin(6).states[found:]] == [False]  # straight to safe, once
    bus.close()
