"""End to end: a real WebSocket to a daemon on the demo plant (README: *Routes*, *Methods*, the demo plant)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from controller.service.daemon import Daemon
from tests.conftest import ADMIN, PANEL, TRAVEL_S, Client, http_get, open_client, sim_daemon


def pin_level(daemon: Daemon, pin: int) -> bool:
    assert daemon.plant is not None
    return bool(daemon.plant.gpio_factory.pin(pin).state)


async def test_door_open_is_confirmed_by_the_contact_with_evidence(daemon: Daemon, admin: Client) -> None:
    started = time.monotonic()
    result = await admin.call("door.open")
    elapsed = time.monotonic() - started
    assert result["device"] == "door" and result["action"] == "open"
    assert result["state"] == "open" and result["changed"] is True and result["confirmed"] is True
    assert result["evidence"]["source"] == "door.contact"
    assert result["evidence"]["value"] == "open"
    assert result["evidence"]["at"].endswith("Z")
    # The answer came only after the simulated door had travelled.
    assert elapsed >= 0.9 * TRAVEL_S and result["elapsed_ms"] >= 900 * TRAVEL_S
    assert pin_level(daemon, 17) is True  # relay energised (active high)
    assert pin_level(daemon, 27) is True  # reed open: the pull-up wins
    state = await admin.call("door.state")
    assert state["state"] == "open" and state["actuator"] is True


async def test_already_open_returns_at_once_unchanged(admin: Client) -> None:
    await admin.call("door.open")
    again = await admin.call("door.open")
    assert again["changed"] is False and again["confirmed"] is True and again["state"] == "open"
    assert again["elapsed_ms"] < 1000 * TRAVEL_S


async def test_jammed_door_fails_with_not_confirmed_and_releases_the_relay(daemon: Daemon, admin: Client) -> None:
    await admin.call("sim.fault", {"device": "door", "fault": "jammed"})
    error = await admin.error("door.open", {"timeout": 0.1})
    assert error["code"] == -32002
    data = error["data"]
    assert data["expected"] == "open" and data["observed"] == "closed"
    assert data["elapsed_ms"] >= 95
    assert "actuator released" in data["recovery"]
    assert pin_level(daemon, 17) is False
    state = await admin.call("door.state")
    assert state == {**state, "state": "closed", "actuator": False}
    # Cleared, the door works again.
    await admin.call("sim.clear", {"device": "door"})
    assert (await admin.call("door.open"))["state"] == "open"


async def test_light_confirmed_by_feedback_and_no_feedback_fault(daemon: Daemon, admin: Client) -> None:
    on = await admin.call("light.on")
    assert on["state"] == "on" and on["evidence"]["source"] == "light.feedback"
    toggled = await admin.call("light.toggle")
    assert toggled["state"] == "off" and toggled["changed"] is True
    await admin.call("sim.fault", {"device": "light", "fault": "no_feedback"})
    error = await admin.error("light.on", {"timeout": 0.1})
    assert error["code"] == -32002
    assert error["data"]["expected"] == "on" and error["data"]["observed"] == "off"
    assert error["data"]["recovery"] == "output returned to off (safe state)"
    assert pin_level(daemon, 22) is False


async def test_actions_on_one_device_run_in_arrival_order(admin: Client) -> None:
    # Sent back to back, without waiting: open must finish before close starts.
    opening = asyncio.create_task(admin.call("door.open"))
    closing = asyncio.create_task(admin.call("door.close"))
    first, second = await asyncio.gather(opening, closing)
    assert first["state"] == "open" and first["changed"] is True
    assert second["state"] == "closed" and second["changed"] is True
    assert second["evidence"]["at"] > first["evidence"]["at"]


@pytest.mark.parametrize("time_scale", [1.0])  # the demo's door: a light call and a state call fit in its travel
async def test_different_devices_run_concurrently_and_state_never_waits(admin: Client) -> None:
    door = asyncio.create_task(admin.call("door.open"))
    # While the door travels, the light is switched and confirmed, and state answers.
    light = await admin.call("light.on")
    assert light["state"] == "on"
    moving = await admin.call("door.state")
    assert moving["state"] == "moving" and moving["actuator"] is True
    assert not door.done()
    assert (await door)["state"] == "open"


async def test_queue_wait_is_bounded_by_the_call_timeout(daemon: Daemon, admin: Client) -> None:
    await admin.call("sim.fault", {"device": "door", "fault": "jammed"})
    energised = daemon.devices["door"].relay.expect(lambda v: v is True)
    slow = asyncio.create_task(admin.request("door.open", {"timeout": 0.3}))
    await energised.wait(2.0)  # the open holds the door's queue
    busy = await admin.error("door.close", {"timeout": 0.05})
    assert busy["code"] == -32003 and busy["data"] == {"device": "door"}
    assert (await slow)["error"]["code"] == -32002


async def test_batch_members_on_one_device_keep_order_and_notifications_get_no_reply(admin: Client) -> None:
    batch = [
        {"jsonrpc": "2.0", "id": "a", "method": "door.open"},
        {"jsonrpc": "2.0", "method": "light.on"},  # notification: runs, no reply
        {"jsonrpc": "2.0", "id": "b", "method": "door.close"},
        {"jsonrpc": "2.0", "id": "c", "method": "no.such"},
    ]
    reply = await admin.raw(json.dumps(batch))
    assert isinstance(reply, list)
    by_id = {r["id"]: r for r in reply}
    assert set(by_id) == {"a", "b", "c"}
    assert by_id["a"]["result"]["state"] == "open"
    assert by_id["b"]["result"]["state"] == "closed"
    assert by_id["b"]["result"]["evidence"]["at"] > by_id["a"]["result"]["evidence"]["at"]
    assert by_id["c"]["error"]["code"] == -32601
    assert (await admin.call("light.state"))["state"] == "on"  # the notification ran


async def test_a_notification_alone_gets_no_reply(admin: Client) -> None:
    await admin.ws.send(json.dumps({"jsonrpc": "2.0", "method": "light.on"}))
    # The next reply on the link is the ping's: nothing was sent for the notification.
    assert await admin.call("system.ping") == {"pong": True}
    assert admin.other.empty()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", -32700),
        ('{"jsonrpc": "2.0", "method": 1}', -32600),
        ("[]", -32600),
        ('"just a string"', -32600),
        ("[" * 5000 + "]" * 5000, -32700),
    ],
)
async def test_malformed_frames_get_errors_and_nothing_moves(daemon: Daemon, admin: Client, frame: str,
                                                             code: int) -> None:
    reply = await admin.raw(frame)
    assert reply["error"]["code"] == code and reply["id"] is None
    assert "Traceback" not in json.dumps(reply) and ".py" not in json.dumps(reply)
    assert pin_level(daemon, 17) is False and pin_level(daemon, 22) is False


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"timeout": -1}, "timeout"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": "soon"}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"timeout": 1e300}, "timeout"),
        ({"speed": 3}, "speed"),
        ([1, 2], "object"),
    ],
)
async def test_bad_params_are_refused_before_any_actuation(daemon: Daemon, admin: Client, params: object,
                                                           fragment: str) -> None:
    error = await admin.error("door.open", params)
    assert error["code"] == -32602 and fragment in error["message"]
    assert pin_level(daemon, 17) is False
    assert (await admin.call("door.state"))["actuator"] is False


async def test_timeout_is_capped_by_config(demo_config) -> None:
    light = dataclasses.replace(demo_config.devices["light"], max_timeout=0.1)
    capped = dataclasses.replace(demo_config, devices={**demo_config.devices, "light": light})
    daemon = sim_daemon(capped)
    await daemon.start()
    try:
        async with open_client(daemon.url) as ws:
            client = Client(ws)
            await client.call("sim.fault", {"device": "light", "fault": "no_feedback"})
            error = await client.error("light.on", {"timeout": 3000}, timeout=5)
            assert error["code"] == -32002
            # The deadline applied was the cap, not the 3000 s asked for.
            assert 100 <= error["data"]["elapsed_ms"] < 1000
            await client.close()
    finally:
        await daemon.stop()


async def test_binary_frame_gets_an_error(admin: Client) -> None:
    reply = await admin.raw(b'{"jsonrpc": "2.0", "id": 1, "method": "system.ping"}')
    assert reply["error"]["code"] == -32600 and "binary" in reply["error"]["message"]
    assert await admin.call("system.ping") == {"pong": True}


async def test_oversized_frame_closes_with_1009_and_others_are_served(daemon: Daemon, admin: Client) -> None:
    async with open_client(daemon.url) as ws:
        await ws.send("[" + " " * 70000 + "]")
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(5):
                await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    assert await admin.call("system.ping") == {"pong": True}


async def test_disconnecting_mid_action_does_not_abort_it(daemon: Daemon, admin: Client) -> None:
    door = daemon.devices["door"]
    proof = door.contact.expect(lambda v: v is False)  # contact inactive = open
    energised = door.relay.expect(lambda v: v is True)
    async with open_client(daemon.url) as ws:
        await ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "door.open"}))
        await energised.wait(2.0)  # the action is under way; now the client vanishes
    await proof.wait(2.0)
    state = await admin.call("door.state")
    assert state["state"] == "open" and state["actuator"] is True


async def test_unauthenticated_calls_get_32001_until_session_auth(daemon: Daemon) -> None:
    async with open_client(daemon.url, token=None) as ws:
        client = Client(ws)
        error = await client.error("system.ping")
        assert error["code"] == -32001 and error["data"] == {"method": "system.ping"}
        bad = await client.error("session.auth", {"token": "wrong-token"})
        assert bad["code"] == -32001
        assert await client.call("session.auth", {"token": PANEL}) == {"role": "panel"}
        assert await client.call("system.ping") == {"pong": True}
        await client.close()


async def test_a_bad_bearer_token_is_refused_with_401_before_upgrade(daemon: Daemon) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with open_client(daemon.url, token="not-a-token"):
            pass
    assert refused.value.response.status_code == 401


async def test_roles_limit_methods(panel: Client) -> None:
    error = await panel.error("sim.fault", {"device": "door", "fault": "jammed"})
    assert error["code"] == -32001 and error["data"] == {"method": "sim.fault"}
    assert (await panel.call("door.open"))["state"] == "open"


async def test_method_not_found_and_error_order(admin: Client) -> None:
    error = await admin.error("door.fly")
    assert error["code"] == -32601
    # Unknown params on an existing method are -32602, checked after the method exists.
    assert (await admin.error("system.ping", {"x": 1}))["code"] == -32602


async def test_foreign_origin_is_refused_and_own_origin_accepted(daemon: Daemon) -> None:
    port = daemon.server.port if daemon.server else 0
    with pytest.raises(InvalidStatus) as refused:
        async with open_client(daemon.url, origin="http://evil.example"):
            pass
    assert refused.value.response.status_code == 403
    async with open_client(daemon.url, origin=f"http://127.0.0.1:{port}") as ws:
        client = Client(ws)
        assert await client.call("system.ping") == {"pong": True}
        await client.close()


async def test_status_and_describe(admin: Client) -> None:
    status = await admin.call("system.status")
    assert set(status["devices"]) == {"door", "light", "fan", "hall_temp"}
    door = status["devices"]["door"]
    assert door["kind"] == "door" and door["online"] is True and door["state"]["state"] == "closed"
    assert door["last_update"].endswith("Z")
    assert status["uptime_s"] >= 0 and status["version"]
    described = await admin.call("system.describe")
    assert set(described["devices"]["light"]["actions"]) == {"on", "off", "toggle"}
    assert "timeout" in described["devices"]["door"]["actions"]["open"]["params"]


async def test_healthz_and_unknown_routes(daemon: Daemon) -> None:
    status, _, body = await http_get(daemon, "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, _, _ = await http_get(daemon, "/nowhere")
    assert status == 404


async def test_shutdown_finishes_in_flight_actions_and_leaves_outputs_safe(daemon: Daemon, admin: Client) -> None:
    await admin.call("light.on")
    energised = daemon.devices["door"].relay.expect(lambda v: v is True)
    opening = asyncio.create_task(admin.call("door.open"))
    await energised.wait(2.0)
    await daemon.stop()
    assert (await opening)["state"] == "open"  # the reply was sent before the link closed
    assert pin_level(daemon, 17) is False and pin_level(daemon, 22) is False


async def test_auth_params_token_never_echoed(admin: Client) -> None:
    error = await admin.error("session.auth", {"token": "s3cret-guess"})
    assert "s3cret-guess" not in json.dumps(error)
    assert ADMIN  # the admin link itself stays authenticated
    assert await admin.call("system.ping") == {"pong": True}
