"""The Python client against a daemon on the demo plant: calls, typed errors, events, reconnects (issue 7)."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from controller import client as pictl
from controller.client import Client, Event, SyncClient
from controller.service.daemon import Daemon
from controller.settings.load import Config
from tests.conftest import ADMIN, PANEL, close_all, on_gpio_demo, sim_daemon

# Event counting: the demo sensor's steady readings would interleave their seq numbers.
demo_config = on_gpio_demo()


@pytest.fixture
async def client(daemon: Daemon) -> AsyncIterator[Client]:
    async with Client(daemon.url, ADMIN, backoff=(0.05, 0.5)) as c:
        yield c


async def next_events(stream: Any, n: int, timeout: float = 5.0) -> list[Event]:
    out = []
    async with asyncio.timeout(timeout):
        while len(out) < n:
            out.append(await anext(stream))
    return out


async def test_call_with_keyword_params_returns_the_confirmed_result(client: Client) -> None:
    result = await client.call("door.open", timeout=1.5)
    assert result["state"] == "open" and result["confirmed"] is True and result["changed"] is True
    assert (await client.call("door.state"))["state"] == "open"
    assert await client.call("system.ping") == {"pong": True}
    status = await client.status()
    assert status["devices"]["door"]["state"]["state"] == "open"


async def test_errors_are_typed_and_carry_their_data(daemon: Daemon, client: Client) -> None:
    await client.call("sim.fault", {"device": "door", "fault": "jammed"})
    with pytest.raises(pictl.NotConfirmed) as jammed:
        await client.call("door.open", timeout=0.1)
    assert jammed.value.code == -32002 and isinstance(jammed.value, pictl.RpcError)
    assert jammed.value.data["expected"] == "open" and jammed.value.data["observed"] == "closed"
    assert "actuator released" in jammed.value.data["recovery"]
    with pytest.raises(pictl.MethodNotFound):
        await client.call("door.fly")
    with pytest.raises(pictl.InvalidParams) as bad:
        await client.call("door.open", speed=3)
    assert bad.value.data["allowed"]
    daemon.devices["light"].points[1].set_online(False, "feedback wire cut")
    with pytest.raises(pictl.Unavailable) as offline:
        await client.call("light.on")
    assert offline.value.data["device"] == "light" and offline.value.data["since"].endswith("Z")
    async with Client(daemon.url, PANEL) as panel:
        with pytest.raises(pictl.Unauthorized) as refused:
            await panel.call("sim.clear", device="door")
        assert refused.value.data == {"method": "sim.clear"}


async def test_a_refused_token_and_an_unreachable_daemon(daemon: Daemon) -> None:
    with pytest.raises(pictl.Unauthorized) as refused:
        await Client(daemon.url, "wrong-token").connect()
    assert refused.value.data["http_status"] == 401
    with pytest.raises(pictl.Unreachable):
        await Client("ws://127.0.0.1:9/ws", ADMIN).connect()


async def test_wait_bounds_the_reply(client: Client) -> None:
    await client.call("sim.fault", {"device": "door", "fault": "jammed"})
    with pytest.raises(pictl.ReplyTimeout):
        await client.call("door.open", timeout=0.3, wait=0.05)


async def test_events_arrive_in_order_for_the_patterns_asked(client: Client, daemon: Daemon) -> None:
    stream = await client.events("door.*").start()
    await client.call("light.on")  # not asked for
    await client.call("door.open")
    moving, opened = await next_events(stream, 2)
    assert (moving.topic, moving.data["state"], opened.data["state"]) == ("door.state", "moving", "open")
    assert opened.seq == moving.seq + 1 and opened.data["cause"] == "rpc" and not opened.is_resync


async def test_a_dropped_link_reconnects_and_replays_what_was_missed(daemon: Daemon) -> None:
    # A backoff long enough (0.1-0.2 s) that the door opens while the client is away.
    client = await Client(daemon.url, ADMIN, backoff=(0.2, 0.4)).connect()
    stream = await client.events("*.state").start()
    await client.call("light.on")
    first = await next_events(stream, 2)
    await close_all(daemon)
    # While the client is away (it reconnects after its backoff), the door opens.
    async with Client(daemon.url, ADMIN) as other:
        await other.call("door.open")
    missed = await next_events(stream, 2)
    assert [e.data["state"] for e in missed] == ["moving", "open"]
    assert [e.seq for e in missed] == [first[-1].seq + 1, first[-1].seq + 2]  # nothing lost, nothing twice
    assert client.connects == 2
    # ...and live events go on flowing.
    await client.call("light.off")
    assert [e.data["state"] for e in await next_events(stream, 2)][-1] == "off"
    await client.close()


async def test_a_restarted_daemon_gives_a_resync_marker_with_the_status(demo_config: Config) -> None:
    first = sim_daemon(demo_config)
    await first.start()
    assert first.server is not None
    port = first.server.port
    second = None
    try:
        async with Client(first.url, ADMIN, backoff=(0.05, 0.3)) as c:
            stream = await c.events("*").start()
            await c.call("door.open")
            await next_events(stream, 2)
            old_epoch = c.epoch
            await first.stop()
            second = sim_daemon(demo_config, port=port)
            await second.start()
            [marker] = await next_events(stream, 1, timeout=10)
            assert marker.is_resync and marker.topic == "resync"
            assert marker.data["devices"]["door"]["state"]["state"] == "closed"  # the new run's truth
            assert c.epoch != old_epoch and c.epoch == second.ctx.events.epoch
            await c.call("light.on")
            assert (await next_events(stream, 2))[-1].data["state"] == "on"
    finally:
        await first.stop()
        if second is not None:
            await second.stop()


async def test_an_action_whose_answer_is_lost_is_resent_and_does_not_actuate_twice(client: Client,
                                                                                   daemon: Daemon) -> None:
    moves: list[str] = []
    daemon.devices["door"].listen(lambda d, what, data: moves.append(data["state"]) if what == "state" else None)
    energised = daemon.devices["door"].relay.expect(lambda v: v is True)
    opening = asyncio.create_task(client.call("door.open"))
    await energised.wait(2.0)
    await close_all(daemon)  # the reply is lost with the link
    result = await asyncio.wait_for(opening, 10)
    assert result["state"] == "open" and result["replayed"] is True
    assert moves == ["moving", "open"]  # one movement


async def test_without_a_request_key_a_lost_answer_is_connection_lost(client: Client, daemon: Daemon) -> None:
    energised = daemon.devices["door"].relay.expect(lambda v: v is True)
    opening = asyncio.create_task(client.call("door.open", at_most_once=False))
    await energised.wait(2.0)
    await close_all(daemon)
    with pytest.raises(pictl.ConnectionLost):
        await asyncio.wait_for(opening, 5)
    assert await client.call("system.ping") == {"pong": True}  # the client itself is back


def test_only_device_actions_get_a_request_key_by_default() -> None:
    from controller.wire.protocol import RESERVED_NAMES

    assert {f"{name}." for name in RESERVED_NAMES} == set(pictl.NOT_ACTIONS)  # no device can be called that
    assert pictl.is_action("door.open") and pictl.is_action("hall_temp.read")
    assert pictl.is_action("pi02.door.open") and not pictl.is_action("pi03.sim.fault")  # through the fleet
    assert not pictl.is_action("pi02.door.state")
    for method in ("door.state", "system.status", "events.subscribe", "session.auth", "sim.fault", "ping"):
        assert not pictl.is_action(method), method


async def test_the_sync_client_for_simple_scripts(daemon: Daemon) -> None:
    def script() -> tuple[Any, Any, str]:
        with SyncClient(daemon.url, ADMIN) as c:
            on = c.call("light.on")
            status = c.status()
            try:
                c.call("door.fly")
            except pictl.MethodNotFound as exc:
                missing = exc.message
            return on, status, missing

    on, status, missing = await asyncio.to_thread(script)
    assert on["state"] == "on" and status["devices"]["light"]["state"]["state"] == "on"
    assert "door.fly" in missing
    with pytest.raises(pictl.Unauthorized):
        await asyncio.to_thread(SyncClient, daemon.url, "wrong-token")


async def test_the_readme_sync_client_example_prints_the_state(daemon: Daemon) -> None:
    """The README's SyncClient snippet, run as written against the daemon: it prints `on`."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    (snippet,) = [block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "SyncClient(" in block]
    assert "ws://127.0.0.1:8765/ws" in snippet
    snippet = snippet.replace("ws://127.0.0.1:8765/ws", daemon.url)
    done = await asyncio.create_subprocess_exec(sys.executable, "-c", snippet, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(20):
        out, err = await done.communicate()
    assert done.returncode == 0, err.decode()
    assert out.decode() == "on\n"
