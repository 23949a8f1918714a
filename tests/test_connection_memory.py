"""A closed connection is freed when it closes, not at the cyclic collector's next full pass
(bench/soak.py saw RSS climb with clients that reconnect: every closed connection lingered)."""

from __future__ import annotations

import asyncio
import gc
import weakref

from controller.service.daemon import Daemon
from tests.conftest import Client, open_client


async def test_closed_connections_are_freed_by_reference_counting(daemon: Daemon) -> None:
    assert daemon.server is not None and daemon.server._ws is not None
    server = daemon.server._ws
    gone: list[weakref.ref[object]] = []
    waits: list[asyncio.Future[None]] = []
    gc.collect()
    gc.disable()  # only reference counting frees anything from here on
    try:
        for i in range(4):
            async with open_client(daemon.url) as ws:
                client = Client(ws)
                await client.call("system.ping")
                if i % 2:  # a subscriber too: the event bus must let go of it as well
                    await client.call("events.subscribe", {"topics": ["*"]})
                (connection,) = server.connections
                gone.append(weakref.ref(connection))
                waits.append(connection.connection_lost_waiter)
                waits.extend(server.handler_tasks)
                del connection
                await client.close()
        await asyncio.wait_for(asyncio.gather(*waits), 5)
        assert [ref() for ref in gone] == [None] * 4
    finally:
        gc.enable()
