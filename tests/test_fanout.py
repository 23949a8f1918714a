"""The fan-out writes in turns (controller/rpc/events.py): a reply never waits behind a fan-out to
many subscribers, and what was published before a reply on a connection still reaches it first."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from controller.rpc import events
from controller.service.daemon import Daemon
from tests.conftest import Client, on_gpio_demo, open_client

demo_config = on_gpio_demo()


async def subscribed(url: str, topic: str) -> Any:
    ws = await open_client(url)
    await ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "events.subscribe", "params": {"topics": [topic]}}))
    assert "result" in json.loads(await ws.recv())
    return ws


async def test_a_reply_goes_out_while_a_fan_out_is_still_being_written(daemon: Daemon,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "WRITES_PER_TURN", 1)  # one subscriber per turn of the loop
    subscribers = [await subscribed(daemon.url, "bulk.*") for _ in range(12)]
    async with open_client(daemon.url) as probe_ws:
        probe = Client(probe_ws)
        seq = daemon.ctx.events.publish("bulk.data", {"i": 1})
        assert daemon.ctx.events.unsent() == 12  # publishing wrote nothing: it queued
        assert await probe.call("system.ping") == {"pong": True}
        assert daemon.ctx.events.unsent() > 0  # the reply did not wait for the whole fan-out
        for ws in subscribers:  # and every subscriber still gets the event
            async with asyncio.timeout(5):
                event = json.loads(await ws.recv())
            assert event["params"]["seq"] == seq and event["params"]["data"] == {"i": 1}
        await probe.close()
    for ws in subscribers:
        await ws.close()


async def test_events_published_before_a_reply_arrive_before_it(daemon: Daemon,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "BATCH_SPACING_S", 30.0)  # the next batch after this one: 30 s away
    ws = await subscribed(daemon.url, "light.*")
    daemon.ctx.events.publish("light.note", {})  # starts a batch, so the light's events must wait for the next
    assert json.loads(await ws.recv())["params"]["topic"] == "light.note"
    await ws.send(json.dumps({"jsonrpc": "2.0", "id": 2, "method": "light.on"}))
    frames = []
    async with asyncio.timeout(5):  # not 30 s: the reply writes what the connection has queued first
        while not frames or frames[-1].get("id") != 2:
            frames.append(json.loads(await ws.recv()))
    assert [f["params"]["data"]["state"] for f in frames[:-1]] == ["off", "on"]  # output, then feedback
    assert frames[-1]["result"]["state"] == "on"
    await ws.close()
