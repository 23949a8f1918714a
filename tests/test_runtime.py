"""The runtime context and what every front door is made from (README, *Layout*): the fleet panel
honours every [server] setting a node honours because it is served by the same code; a listener
that fails never stops delivery to the others; subscriptions are given back."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from controller.fleet.aggregator import Aggregator
from controller.fleet.panel import FleetPanel
from controller.service import configfile
from controller.service.daemon import Daemon
from controller.wire.owned import stop_task
from drivers.base import Listeners
from tests.conftest import ADMIN, Client, open_client

FLEET = Path(__file__).resolve().parent.parent / "config" / "fleet.toml"


def self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=panel.example", "-addext", "subjectAltName=DNS:panel.example,IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    return cert, key


async def test_the_fleet_panel_honours_every_server_setting_a_node_honours(tmp_path: Path) -> None:
    """TLS, allowed_hosts, trusted_proxies, the per-address cap and the audit file: the settings the
    fleet panel once dropped by rebuilding the listener by hand."""
    cert, key = self_signed(tmp_path)
    text = FLEET.read_text().replace('[server]\nlisten = "127.0.0.1:8780"', (
        f'[server]\nlisten = "127.0.0.1:0"\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
        'allowed_hosts = ["panel.example"]\ntrusted_proxies = ["127.0.0.1"]\nmax_connections_per_address = 1\n'
        f'[audit]\nfile = "{tmp_path / "audit.jsonl"}"\n'))
    fleet = configfile.loads(text, str(tmp_path / "fleet.toml"), devices_required=False)
    panel = FleetPanel(Aggregator("ws://127.0.0.1:9/ws", "realm1"), fleet)  # no router needed for the listener
    await panel.start()
    try:
        assert panel.url.startswith("wss://")
        context = ssl.create_default_context(cafile=str(cert))
        port = panel.server.port
        # allowed_hosts: the building's name is answered, any other gets 421 (DNS rebinding).
        for host, expected in (("panel.example", 200), ("other.example", 421), ("127.0.0.1", 200)):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context,
                                                           server_hostname="panel.example")
            writer.write(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            head = (await asyncio.wait_for(reader.read(4096), 5)).decode("latin-1")
            writer.close()
            assert head.split()[1] == str(expected), (host, head)
        # trusted_proxies + the per-address cap: two clients behind the proxy are two addresses.
        headers = {"Authorization": f"Bearer {ADMIN}"}
        async with open_client(panel.url, ssl=context, additional_headers={**headers, "X-Forwarded-For": "10.0.0.1"}) \
                as first:
            client = Client(first)
            assert await client.call("system.ping") == {"pong": True}
            async with open_client(panel.url, ssl=context,
                                   additional_headers={**headers, "X-Forwarded-For": "10.0.0.2"}) as second:
                assert await Client(second).call("system.ping") == {"pong": True}
            with pytest.raises(Exception, match="429"):  # the same client address again: over its cap
                async with open_client(panel.url, ssl=context,
                                       additional_headers={**headers, "X-Forwarded-For": "10.0.0.1"}):
                    pass
            # The audit trail is the fleet's own file, written off the loop and waited for.
            assert (await client.error("pi01.door.open"))["code"] == -32601  # no node yet: no such method
            await client.close()
    finally:
        await panel.stop()
    assert panel.ctx.audit.path == str(tmp_path / "audit.jsonl")


async def test_a_listener_that_raises_never_stops_the_others(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[int] = []
    listeners: Listeners[[int]] = Listeners("numbers")
    listeners.add(lambda n: 1 / 0)
    undo = listeners.add(seen.append)
    listeners.emit(1)
    undo()
    undo()  # idempotent
    listeners.emit(2)
    assert seen == [1] and len(listeners) == 1
    assert "a listener of numbers failed" in caplog.text


async def test_a_failing_event_tap_leaves_every_subscriber_served(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A bridge callback that raises: the event is still numbered, buffered and delivered."""
    from tests.conftest import gpio_demo

    daemon = Daemon(gpio_demo(), simulate=True, host="127.0.0.1", port=0, time_scale=0.1)
    await daemon.start()
    try:
        assert daemon.ctx is not None
        untap = daemon.ctx.events.tap(lambda event: [][1])
        async with open_client(daemon.url) as ws:
            client = Client(ws)
            await client.call("events.subscribe", {"topics": ["light.state"]})
            with caplog.at_level(logging.ERROR):
                await client.call("light.on")
                async with asyncio.timeout(5):
                    while True:
                        event = await client.other.get()
                        if event.get("params", {}).get("data", {}).get("state") == "on":
                            break
            assert "a listener of events failed" in caplog.text
            untap()
            await client.close()
    finally:
        await daemon.stop()


async def test_the_session_is_typed_connection_state_and_points_back_weakly() -> None:
    """The session on our connection class, events sent through a weak reference (no connection ->
    session -> connection cycle), both let go when the connection ends."""
    from tests.conftest import gpio_demo, until

    daemon = Daemon(gpio_demo(), simulate=True, host="127.0.0.1", port=0, time_scale=0.1)
    await daemon.start()
    try:
        assert daemon.server is not None
        async with open_client(daemon.url) as ws:
            await ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "events.subscribe",
                                      "params": {"topics": ["*"]}}))
            await ws.recv()
            (conn,) = daemon.server.connections
            session = conn.session
            assert session is not None and session.events_to is not None and session.events_to() is conn
            assert not session.closed
        server = daemon.server
        await until(server.on_connections, lambda: server.open_connections == 0)
        assert session.closed and conn.session is None
    finally:
        await daemon.stop()


async def test_a_task_that_swallowed_its_cancellation_is_still_stopped() -> None:
    """On Python 3.11, asyncio.wait_for returns its result and drops a cancellation that lands as
    its future completes (aiomqtt awaits it for a SUBACK inside the MQTT bridge's connection task):
    a bridge closed at that moment waited for that task for ever. stop_task ends it anyway."""
    loop = asyncio.get_running_loop()
    answered = loop.create_future()
    served = asyncio.Event()

    async def link() -> None:
        await asyncio.wait_for(answered, 10)  # the broker's acknowledgement
        served.set()
        await asyncio.Event().wait()  # then serving messages, for ever

    task = loop.create_task(link())
    await asyncio.sleep(0)  # it awaits the acknowledgement
    answered.set_result(None)
    task.cancel()  # in the same turn as the acknowledgement
    assert await stop_task(task, 2.0)
    assert task.cancelled()
    assert served.is_set() == (sys.version_info < (3, 12))  # the cancellation was swallowed there
