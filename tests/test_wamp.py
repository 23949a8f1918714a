"""The WAMP bridge and the fleet aggregator against a real Crossbar.io router (issue 15).

One router per module (started by the test from `.venv-crossbar`, config version 2, a realm, a
WebSocket transport on a free loopback port); each test brings its own nodes with names of its
own, so they do not see each other's procedures. The router restart test runs last: it restarts
the shared router.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.service import configfile
from controller.service.daemon import Daemon
from controller.settings.load import Config
from controller.settings.wamp import WampConfig
from tests.conftest import ADMIN, DEMO, DEMO_GPIO_TEXT, TIME_SCALE, Client, http_get, open_client, sim_daemon
from tests.crossbar import CrossbarRouter, crossbar_executable
from tests.doors import HEAD

MISSING = None if crossbar_executable() is not None else "crossbar is not installed (make crossbar)"
if MISSING and os.environ.get("CI"):
    pytest.fail(f"WAMP tests cannot run: {MISSING}; .ci/run installs it", pytrace=False)
# One router for the module (below): under pytest-xdist (`make test`) its tests all run on one worker.
pytestmark = [pytest.mark.skipif(MISSING is not None, reason=MISSING or ""), pytest.mark.xdist_group("crossbar"),
              pytest.mark.long]

from autobahn.asyncio.wamp import ApplicationSession  # noqa: E402
from autobahn.wamp.exception import ApplicationError  # noqa: E402

from controller.bridges.wamp.bridge import component  # noqa: E402
from controller.fleet.aggregator import Aggregator  # noqa: E402
from controller.fleet.panel import FleetPanel  # noqa: E402

REALM = "realm1"
TICKET_ID, TICKET = "pi-ticketed", "a-long-enough-ticket-for-the-test"
JOIN_S = 15.0  # joining a router on a loaded 2-core machine
LEAVE_S = 2.0  # the promise: a node whose session leaves is offline within 2 s
RETRY_S = 0.6  # nodes and the aggregator retry a lost router this often (the least a config allows)


@pytest.fixture(scope="module")
def router() -> Iterator[CrossbarRouter]:
    with CrossbarRouter(realm=REALM, tickets={TICKET_ID: TICKET}) as r:
        yield r


def node_config(router: CrossbarRouter, node: str, *, role: str = "admin", extra: str = "",
                text: str = DEMO_GPIO_TEXT) -> Config:
    return configfile.loads(text + extra + f'\n[wamp]\nurl = "{router.url}"\nrealm = "{REALM}"\nnode = "{node}"\n'
                        f'role = "{role}"\nmax_retry_delay = {RETRY_S}\n', str(DEMO))


@contextlib.asynccontextmanager
async def running_node(cfg: Config, wait: bool = True, time_scale: float = TIME_SCALE) -> AsyncIterator[Daemon]:
    daemon = sim_daemon(cfg, time_scale=time_scale)
    await daemon.start()
    try:
        if wait:
            async with asyncio.timeout(JOIN_S):
                await daemon.wamp.ready.wait()
        yield daemon
    finally:
        await daemon.stop()


@contextlib.asynccontextmanager
async def caller(router: CrossbarRouter) -> AsyncIterator[ApplicationSession]:
    """A plain autobahn session on the router: a script, another service, the aggregator's peer."""
    comp = component(router.url, REALM)
    joined: asyncio.Future[ApplicationSession] = asyncio.get_running_loop().create_future()
    comp.on("join", lambda session, details: None if joined.done() else joined.set_result(session))
    comp.start(asyncio.get_running_loop())
    try:
        async with asyncio.timeout(JOIN_S):
            yield await joined
    finally:
        with contextlib.suppress(Exception):  # a caller whose link a test cut has nothing to say goodbye on
            async with asyncio.timeout(1):
                await comp.stop()


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Await a condition the code under test reaches by itself (no event to hook), with a deadline."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"not within {timeout} s: {what}") from None


def door_moved(daemon: Daemon) -> asyncio.Future[dict[str, Any]]:
    """The next door.state event whose state is *state*, as the node publishes it."""
    future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    def tap(event: dict[str, Any]) -> None:
        if event["topic"] == "door.state" and not future.done():
            future.set_result(event)

    daemon.ctx.events.tap(tap)
    return future


async def metric(daemon: Daemon, name: str) -> float:
    _status, _headers, body = await http_get(daemon, "/metrics")
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"{name} not exported")


# -- the bridge -------------------------------------------------------------------------------------
async def test_a_confirmed_door_through_the_router_is_the_websocket_result(router: CrossbarRouter) -> None:
    async with running_node(node_config(router, "n1")) as node, caller(router) as wamp:
        assert await metric(node, "pictl_wamp_connected") == 1.0
        result = await wamp.call("pictl.n1.door.open", timeout=2)
        assert result["confirmed"] is True and result["changed"] is True and result["state"] == "open"
        assert result["evidence"]["source"] == "door.contact" and result["evidence"]["value"] == "open"
        assert node.plant is not None
        assert node.devices["door"].state()["state"] == "open"  # the node's own plant moved
        async with open_client(node.url, ADMIN) as ws:  # the same call over the WebSocket: the same shape
            again = await Client(ws).call("door.open")
        assert set(again) == set(result) and again["changed"] is False
        assert await wamp.call("pictl.n1.door.state") == node.devices["door"].state()
        status = await wamp.call("pictl.n1.system.status")
        assert set(status["devices"]) == {"door", "light"}
        with pytest.raises(ApplicationError) as no_such:  # WAMP has its own pub/sub and sessions
            await wamp.call("pictl.n1.events.subscribe", topics=["*"])
        assert no_such.value.error == "wamp.error.no_such_procedure"


async def test_the_role_decides_what_is_registered_and_how_often(router: CrossbarRouter, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    extra = (f'\n[auth.roles.automation]\nallow = ["door.*", "system.ping"]\ndeny = ["door.close"]\n'
             f'rate = 1\nburst = 2\n\n[audit]\nfile = "{audit}"\n')
    async with running_node(node_config(router, "n2", role="automation", extra=extra)) as node, \
            caller(router) as wamp:
        assert node.wamp.methods() == ["door.open", "door.state", "system.ping"]
        for denied in ("pictl.n2.door.close", "pictl.n2.light.on", "pictl.n2.sim.fault"):
            with pytest.raises(ApplicationError) as refused:
                await wamp.call(denied)
            assert refused.value.error == "wamp.error.no_such_procedure"
        await wamp.call("pictl.n2.door.open")
        await wamp.call("pictl.n2.system.ping")
        with pytest.raises(ApplicationError) as limited:  # burst of 2, then 1 per second
            await wamp.call("pictl.n2.system.ping")
        assert limited.value.error == "pictl.error.rate_limited"
        assert limited.value.kwargs["code"] == -32005 and limited.value.kwargs["data"]["retry_after_s"] > 0
    entries = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(e["token"], e["role"], e["method"], e["outcome"]) for e in entries] == [
        ("wamp:n2", "automation", "door.open", "ok")]
    assert entries[0]["peer"].startswith("wamp:")


async def test_a_jammed_door_is_its_error_uri_with_code_and_data(router: CrossbarRouter) -> None:
    async with running_node(node_config(router, "n3")) as node, caller(router) as wamp:
        await wamp.call("pictl.n3.sim.fault", device="door", fault="jammed")
        with pytest.raises(ApplicationError) as jammed:
            await wamp.call("pictl.n3.door.open", timeout=0.5)
        err = jammed.value
        assert err.error == "pictl.error.not_confirmed"
        assert err.args == ("door did not become open within the deadline",)
        assert err.kwargs["code"] == -32002
        data = err.kwargs["data"]
        assert data["expected"] == "open" and data["observed"] == "closed"
        assert data["recovery"].startswith("actuator released") and data["elapsed_ms"] >= 500
        assert node.devices["door"].state()["actuator"] is False  # safe: the relay is released
        with pytest.raises(ApplicationError) as bad:
            await wamp.call("pictl.n3.door.open", speed=3)
        assert bad.value.error == "pictl.error.invalid_params" and bad.value.kwargs["code"] == -32602
        assert bad.value.kwargs["data"]["unknown"] == ["speed"]
        with pytest.raises(ApplicationError) as positional:
            await wamp.call("pictl.n3.door.open", 3)
        assert positional.value.error == "pictl.error.invalid_params"


async def test_events_are_published_with_the_event_object_as_the_only_argument(router: CrossbarRouter) -> None:
    async with running_node(node_config(router, "n4")) as node, caller(router) as wamp:
        seen: asyncio.Queue[tuple[tuple[Any, ...], dict[str, Any]]] = asyncio.Queue()
        await wamp.subscribe(lambda *args, **kwargs: seen.put_nowait((args, kwargs)), "pictl.n4.door.state")
        await wamp.call("pictl.n4.door.open")
        async with asyncio.timeout(5):
            moving_args, moving_kwargs = await seen.get()
            open_args, _ = await seen.get()
        assert moving_kwargs == {} and len(moving_args) == 1
        moving, opened = moving_args[0], open_args[0]
        assert moving["topic"] == "door.state" and moving["data"]["state"] == "moving"
        assert opened["data"] == {**opened["data"], "state": "open", "cause": "rpc"}
        assert opened["seq"] == moving["seq"] + 1 and opened["time"].endswith("Z")
        assert opened["seq"] == node.ctx.events.seq


async def test_two_nodes_have_their_own_uris_and_a_third_cannot_take_a_name(router: CrossbarRouter) -> None:
    async with running_node(node_config(router, "east")) as east, running_node(node_config(router, "west")) as west, \
            caller(router) as wamp:
        await wamp.call("pictl.west.door.open")
        assert west.devices["door"].state()["state"] == "open"
        assert east.devices["door"].state()["state"] == "closed"  # only west's plant moved
        async with running_node(node_config(router, "west"), wait=False) as impostor:
            await until(lambda: impostor.wamp.refusals >= 1, JOIN_S, "the second 'west' is refused")
            assert not impostor.wamp.ready.is_set()
            result = await wamp.call("pictl.west.door.close")
            assert result["changed"] is True and west.devices["door"].state()["state"] == "closed"
            assert impostor.devices["door"].state()["state"] == "closed"


async def test_a_reload_registers_what_is_new_and_withdraws_what_is_gone(router: CrossbarRouter) -> None:
    async with running_node(node_config(router, "n7")) as node, caller(router) as wamp:
        assert (await wamp.call("pictl.n7.light.on"))["state"] == "on"
        without_light = DEMO_GPIO_TEXT.split("\n# A light on a relay")[0] + "\n"
        plan = await node.apply(node_config(router, "n7", text=without_light))
        assert plan.removed == ("light",)
        with pytest.raises(ApplicationError) as gone:
            await wamp.call("pictl.n7.light.off")
        assert gone.value.error == "wamp.error.no_such_procedure"
        assert (await wamp.call("pictl.n7.door.open"))["state"] == "open"
        await node.apply(node_config(router, "n7"))  # and back
        assert (await wamp.call("pictl.n7.light.on"))["changed"] is True


async def test_wamp_ticket_authentication(router: CrossbarRouter, tmp_path: Path) -> None:
    ticket = tmp_path / "ticket"
    ticket.write_text(TICKET + "\n")
    ticket.chmod(0o600)
    cfg = node_config(router, "n5")
    assert cfg.wamp is not None
    cfg = Config(**{**cfg.__dict__, "wamp": WampConfig(**{**cfg.wamp.__dict__, "authid": TICKET_ID,
                                                                 "ticket": TICKET})})
    async with running_node(cfg) as node, caller(router) as wamp:
        session_id = node.wamp.link.session._session_id
        info = await wamp.call("wamp.session.get", session_id)
        assert info["authid"] == TICKET_ID and info["authmethod"] == "ticket"


async def test_a_node_killed_mid_call_cancels_the_caller_and_the_door_ends_safe(router: CrossbarRouter,
                                                                                tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    async with running_node(node_config(router, "n6", extra=f'\n[audit]\nfile = "{audit}"\n')) as node, \
            caller(router) as wamp:
        moving = door_moved(node)
        call = asyncio.ensure_future(wamp.call("pictl.n6.door.open", timeout=2))
        async with asyncio.timeout(5):
            assert (await moving)["data"]["state"] == "moving"
        # The node vanishes from the router as a killed process or a cut cable does: no goodbye.
        lost_at = time.monotonic()
        node.wamp.link.session._transport.transport.abort()
        with pytest.raises(ApplicationError) as canceled:
            await asyncio.wait_for(call, 5)
        assert canceled.value.error == "wamp.error.canceled"
        assert time.monotonic() - lost_at < LEAVE_S
        # The plant: the action was not cut short. The contact proves the door open, the relay
        # holds it (no half-done "moving" with a released relay), and the outcome is audited.
        await until(lambda: bool(audit.exists() and audit.read_text()), 5, "the door.open is audited")
        entry = json.loads(audit.read_text().splitlines()[-1])
        assert (entry["method"], entry["outcome"], entry["state"]) == ("door.open", "ok", "open")
        door = node.devices["door"].state()
        assert door["state"] == "open" and door["actuator"] is True
        assert node.plant is not None  # the demo's wiring: relay GPIO17 energised, contact GPIO27 high (open)
        assert node.plant.gpio_factory.pin(17).state and node.plant.gpio_factory.pin(27).state
        async with asyncio.timeout(JOIN_S):  # and the node is back on the router by itself
            await node.wamp.ready.wait()
        assert (await wamp.call("pictl.n6.door.state"))["state"] == "open"


async def test_a_caller_that_vanishes_mid_call_does_not_cut_the_action_short(
        router: CrossbarRouter, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="controller.bridges.wamp.bridge")
    audit = tmp_path / "audit.jsonl"
    # The door travels 0.9 s (three times the demo's), so the router has surely told the node its caller
    # left before the door arrives: at the tests' 30 ms a loaded machine finished the action first.
    async with running_node(node_config(router, "n8", extra=f'\n[audit]\nfile = "{audit}"\n'),
                            time_scale=3.0) as node:
        moving = door_moved(node)
        async with caller(router) as wamp:
            call = asyncio.ensure_future(wamp.call("pictl.n8.door.open", timeout=2))
            async with asyncio.timeout(5):
                assert (await moving)["data"]["state"] == "moving"
            wamp._transport.transport.abort()  # the caller's process dies, its link with it
            call.add_done_callback(lambda f: f.cancelled() or f.exception())  # nobody is left to read it
        # The router cancels the invocation; the node lets the action finish, audits and logs it.
        await until(lambda: "finished after its WAMP caller left: ok" in caplog.text, 5,
                    "the node reports the orphaned call's outcome")
        assert "WAMP caller of door.open went away" in caplog.text
        entry = json.loads(audit.read_text().splitlines()[-1])
        assert (entry["method"], entry["outcome"], entry["state"]) == ("door.open", "ok", "open")
        assert node.devices["door"].state() == {**node.devices["door"].state(), "state": "open", "actuator": True}


# -- the aggregator ---------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def fleet(router: CrossbarRouter) -> AsyncIterator[tuple[Aggregator, FleetPanel]]:
    aggregator = Aggregator(router.url, REALM, max_retry_delay=RETRY_S)
    panel = FleetPanel(aggregator, configfile.load(str(DEMO.parent / "fleet.toml"), devices_required=False),
                       host="127.0.0.1", port=0)
    await panel.start()
    aggregator.start()
    try:
        async with asyncio.timeout(JOIN_S):
            while aggregator.session is None:
                await asyncio.sleep(0.02)
        yield aggregator, panel
    finally:
        await panel.stop()
        await aggregator.stop()


async def test_the_fleet_view_as_nodes_come_and_go(router: CrossbarRouter) -> None:
    async with running_node(node_config(router, "f1")) as f1, fleet(router) as (aggregator, panel), \
            caller(router) as wamp:
        view = aggregator.view
        await until(lambda: "f1" in view.nodes and view.nodes["f1"].online, 5, "f1, already up, is found")
        published: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        await wamp.subscribe(published.put_nowait, "pictl.fleet.status")
        async with running_node(node_config(router, "f2")) as f2:
            await until(lambda: "f2" in view.nodes and view.nodes["f2"].online, 5, "f2, joining later, is found")
            status = await wamp.call("pictl.fleet.status")
            assert set(status["nodes"]) >= {"f1", "f2"}
            door = status["nodes"]["f2"]["devices"]["door"]
            assert door["kind"] == "door" and door["online"] is True and door["state"]["state"] == "closed"
            assert set(door) == {"kind", "online", "state", "last_update"}
            await f2.devices["door"].run("open", {}, 2.0)  # a change on the node...
            await until(lambda: view.nodes["f2"].devices["door"]["state"]["state"] == "open", 2,
                        "...reaches the fleet view")
            async with asyncio.timeout(5):  # ...and pictl.fleet.status is published with it
                while (await published.get())["nodes"]["f2"]["devices"]["door"]["state"]["state"] != "open":
                    pass
            # Through the fleet panel's front door: calls go to the owning node.
            async with open_client(panel.url, ADMIN) as ws:
                client = Client(ws)
                described = await client.call("system.describe")
                assert described["devices"]["f1.door"]["node"] == "f1"
                assert "f2.door.close" in described["methods"]
                result = await client.call("f1.door.open")
                assert result["confirmed"] is True and f1.devices["door"].state()["state"] == "open"
                assert f2.devices["door"].state()["state"] == "open"  # untouched by f1's call
                offline_at: list[float] = []
                view.on_change(lambda node, what, data: offline_at.append(time.monotonic())
                                      if (node, what) == ("f2", "left") else None)
                left_at = time.monotonic()
                await f2.stop()  # a node that leaves...
                await until(lambda: not view.nodes["f2"].online, LEAVE_S, "f2 is offline within 2 s")
                assert offline_at and offline_at[0] - left_at < LEAVE_S
                status = await client.call("system.status")
                assert status["devices"]["f2.door"]["online"] is False
                assert status["devices"]["f2.door"]["reason"] == "node f2 is offline"
                assert status["devices"]["f1.door"]["online"] is True
                gone = await client.error("f2.door.close")
                assert gone["code"] == -32004 and gone["data"]["node"] == "f2"
        # A node cut off without a goodbye is offline as soon as the router drops its session.
        f1.wamp.link.session._transport.transport.abort()
        await until(lambda: not view.nodes["f1"].online, LEAVE_S, "f1 is offline within 2 s")
        await until(lambda: view.nodes["f1"].online, JOIN_S, "f1 rejoins and is online again")


async def test_the_doors_reach_the_router_and_the_fleet_with_no_code_of_their_own(router: CrossbarRouter) -> None:
    """The kinds of config/building.toml's doors half (issue 22): called with keyword arguments, their
    own events (a lock's alarm) published, their states in the fleet view, and no WAMP or fleet code
    that names them."""
    doors = HEAD + (
        '[devices.entrance]\nkind = "lock"\nstrike = { gpio = 17 }\nmonitor = { gpio = 27, pull = "up" }\n'
        'door_contact = { gpio = 22, pull = "up" }\n'
        '[devices.blind]\nkind = "cover"\nup = { gpio = 5 }\ndown = { gpio = 6 }\n'
        'closed_endstop = { gpio = 19, pull = "up" }\ntravel_s = 0.2\nreverse_delay_s = 0.05\n')
    async with running_node(node_config(router, "d1", text=doors)) as node, fleet(router) as (aggregator, _), \
            caller(router) as wamp:
        view = aggregator.view
        # Once the fleet has read the node (an event published while it reads the node can be lost).
        await until(lambda: "d1" in view.nodes and view.nodes["d1"].online, JOIN_S, "the fleet finds d1")
        alarms: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        await wamp.subscribe(alarms.put_nowait, "pictl.d1.entrance.alarm")
        result = await wamp.call("pictl.d1.blind.set_position", position=30)
        assert result["evidence"]["estimated"] is True and result["state"] == "stopped"
        assert node.plant is not None
        node.plant.inject("entrance", "forced")
        async with asyncio.timeout(5):
            assert (await alarms.get())["data"] == {"alarm": "forced"}
        await until(lambda: "d1" in view.nodes and view.nodes["d1"].devices.get("blind", {}).get("state", {})
                    .get("position") == 30, 5, "the blind's position reaches the fleet view")
        await until(lambda: view.nodes["d1"].devices["entrance"]["state"].get("alarm") == "forced", 5,
                    "the lock's alarm reaches the fleet view")
        assert view.nodes["d1"].devices["entrance"]["kind"] == "lock"


# Last: it restarts the module's router.
async def test_the_bridge_rejoins_and_registers_again_after_a_router_restart(
        router: CrossbarRouter, caplog: pytest.LogCaptureFixture) -> None:
    async with running_node(node_config(router, "n9")) as node, fleet(router) as (aggregator, panel), \
            open_client(panel.url, ADMIN) as ws:
        view = aggregator.view
        await until(lambda: "n9" in view.nodes and view.nodes["n9"].online, 5, "the fleet sees n9")
        moving = door_moved(node)
        cut_off = asyncio.ensure_future(Client(ws).error("n9.door.open"))  # through the fleet, no timeout
        await asyncio.wait_for(moving, 5)  # the node is acting...
        router.stop()  # ...when the router goes: its answer cannot come back
        async with asyncio.timeout(5):  # at once, not after the fleet's deadline (65 s without a timeout)
            error = await cut_off
        assert error["code"] == -32002 and error["data"]["observed"] == "unknown"
        assert error["data"]["recovery"] == "outcome unknown: re-read n9's state"
        await until(lambda: not node.wamp.ready.is_set(), 10, "the bridge notices the router is gone")
        assert await metric(node, "pictl_wamp_connected") == 0.0
        await until(lambda: not view.nodes["n9"].online, 10, "the fleet marks n9 offline: it cannot know")
        await asyncio.to_thread(router.start)
        async with asyncio.timeout(JOIN_S):
            await node.wamp.ready.wait()
        async with caller(router) as wamp:
            assert await wamp.call("pictl.n9.system.ping") == {"pong": True}
            await until(lambda: view.nodes["n9"].online, JOIN_S, "the aggregator rejoins and finds n9 again")
            assert (await wamp.call("pictl.n9.door.open"))["state"] == "open"
            await until(lambda: view.nodes["n9"].devices["door"]["state"]["state"] == "open", 5,
                        "and follows its events again")
            assert (await wamp.call("pictl.fleet.status"))["nodes"]["n9"]["online"] is True
        assert await metric(node, "pictl_wamp_connected") == 1.0
        assert panel.ctx.metrics.registry.get_sample_value("pictl_wamp_connected") == 1.0
    # A router restart is routine: nothing logged it as an error (autobahn's "Connection failed",
    # a reply sent on the closed link, a cancel sent on it).
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
