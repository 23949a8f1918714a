"""The doors of config/building.toml end to end: a real WebSocket, the panel's token, the plant's record
over ``sim.timeline``, and the metrics families (README, "The building demo")."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.service import configfile as config
from controller.service.daemon import Daemon
from tests.conftest import ADMIN, PANEL, Client, http_get, open_client

BUILDING = Path(__file__).resolve().parent.parent / "config" / "building.toml"
DOORS = {"entrance": "lock", "garage": "garage", "blind": "cover"}


@pytest.fixture
async def building() -> AsyncIterator[Daemon]:
    daemon = Daemon(config.load(str(BUILDING)), simulate=True, host="127.0.0.1", port=0, time_scale=0.1)
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()


async def test_the_building_starts_locked_and_closed_and_describes_its_doors(building: Daemon) -> None:
    async with open_client(building.url, PANEL) as ws:
        client = Client(ws)
        status = (await client.call("system.status"))["devices"]
        assert {name: (status[name]["kind"], status[name]["state"]["state"]) for name in DOORS} == \
            {"entrance": ("lock", "locked"), "garage": ("garage", "closed"), "blind": ("cover", "closed")}
        assert status["entrance"]["state"]["door"] == "closed" and status["blind"]["state"]["position"] == 0
        described = (await client.call("system.describe"))["devices"]
        assert set(described["entrance"]["actions"]) == {"unlock", "lock"}
        assert described["entrance"]["actions"]["unlock"]["params"]["hold_s"]["required"] is False
        assert set(described["garage"]["actions"]) == {"open", "close", "stop"}
        assert described["blind"]["actions"]["set_position"]["params"]["position"]["required"] is True
        # The panel's role may work every door.
        unlocked = await client.call("entrance.unlock", {"hold_s": 1})
        assert unlocked["evidence"]["source"] == "entrance.monitor"
        error = await client.error("entrance.unlock", {"hold_s": 60})
        assert error["code"] == -32602 and error["data"]["param"] == "hold_s"
        await client.close()


async def test_sim_timeline_names_both_relays_of_the_blind_in_every_entry(building: Daemon) -> None:
    async with open_client(building.url, ADMIN) as ws:
        client = Client(ws)
        since = (await client.call("sim.timeline", {"device": "blind", "since": 0}))["outputs"][-1][0]
        await client.call("blind.open")
        record = await client.call("sim.timeline", {"device": "blind", "since": since})
        assert [value for _, value in record["outputs"]] == [{"up": True, "down": False}, {"up": False, "down": False}]
        assert record["positions"][-1][1] == {"position": 100, "motion": "stopped"}
        garage = await client.call("sim.timeline", {"device": "garage", "since": since})
        assert garage["outputs"] == []  # single-output devices keep plain values; nothing pressed here
        await client.close()


async def test_every_door_action_has_its_metric_series_from_the_start(building: Daemon) -> None:
    _, _, body = await http_get(building, "/metrics")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    confirm = {(s.labels["device"], s.labels["action"]) for s in families["pictl_action_confirm_seconds"].samples
               if s.name.endswith("_count")}
    failures = {(s.labels["device"], s.labels["action"]) for s in families["pictl_action_failures"].samples}
    wanted = {("entrance", "unlock"), ("entrance", "lock"), ("garage", "open"), ("garage", "close"),
              ("garage", "stop"), ("blind", "open"), ("blind", "close"), ("blind", "stop"), ("blind", "set_position")}
    assert wanted <= confirm and wanted <= failures
