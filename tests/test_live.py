"""Live state over a real WebSocket: events, resume, slow subscribers, metrics, audit (issue 4)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed

from controller.service.daemon import Daemon
from controller.settings.load import Config
from controller.settings.sections import AuditConfig, EventsConfig, MetricsConfig
from tests.conftest import ADMIN, PANEL, TRAVEL_S, Client, http_get, on_gpio_demo, open_client, sim_daemon

demo_config = on_gpio_demo()


async def next_event(client: Client, timeout: float = 5.0) -> dict[str, Any]:
    while True:
        async with asyncio.timeout(timeout):
            msg = await client.other.get()
        if isinstance(msg, dict) and msg.get("method") == "event":
            return msg["params"]


async def events_until(client: Client, predicate: Any, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Events in arrival order up to and including the first one matching *predicate*."""
    seen = []
    while True:
        event = await next_event(client, timeout)
        seen.append(event)
        if predicate(event):
            return seen


async def started(config: Config) -> Daemon:
    daemon = sim_daemon(config)
    await daemon.start()
    return daemon


async def test_subscribe_delivers_numbered_state_events_with_their_cause(admin: Client) -> None:
    reply = await admin.call("events.subscribe", {"topics": ["door.*"]})
    assert reply["subscribed"] == ["door.*"] and isinstance(reply["seq"], int) and reply["epoch"]
    await admin.call("door.open")
    await admin.call("light.on")  # not subscribed: must not arrive
    events = await events_until(admin, lambda e: e["data"]["state"] == "open")
    assert [e["data"]["state"] for e in events] == ["moving", "open"]
    assert all(e["topic"] == "door.state" and e["data"]["cause"] == "rpc" for e in events)
    assert events[1]["seq"] == events[0]["seq"] + 1
    assert events[0]["time"].endswith("Z") and events[1]["data"]["actuator"] is True
    await admin.call("system.ping")
    assert admin.other.empty()


async def test_patterns_and_unsubscribe(admin: Client) -> None:
    await admin.call("events.subscribe", {"topics": ["*.state"]})
    await admin.call("light.on")
    assert (await events_until(admin, lambda e: e["data"]["state"] == "on"))[-1]["topic"] == "light.state"
    reply = await admin.call("events.unsubscribe", {"topics": ["*.state", "never.subscribed"]})
    assert reply == {"unsubscribed": ["*.state"]}
    await admin.call("light.off")
    await admin.call("system.ping")
    assert admin.other.empty()


@pytest.mark.parametrize("params", [{}, {"topics": []}, {"topics": "door.*"}, {"topics": [1]},
                                    {"topics": ["x" * 200]}, {"topics": ["*"], "since_seq": -1},
                                    {"topics": ["*"], "since_seq": "3"}, {"topics": ["*"], "colour": 1}])
async def test_bad_subscriptions_are_invalid_params(admin: Client, params: dict[str, Any]) -> None:
    assert (await admin.error("events.subscribe", params))["code"] == -32602


async def test_external_change_and_discrepancy(daemon: Daemon, admin: Client) -> None:
    await admin.call("events.subscribe", {"topics": ["door.*"]})
    assert daemon.plant is not None
    daemon.plant.move_by_hand("door", True)  # someone pushes the closed door open
    events = await events_until(admin, lambda e: e["topic"] == "door.discrepancy")
    state = [e for e in events if e["topic"] == "door.state"]
    assert state[-1]["data"]["state"] == "open" and state[-1]["data"]["cause"] == "external"
    assert events[-1]["data"] == {"output": "released", "expected": "closed", "observed": "open"}
    assert events[-1]["seq"] == state[-1]["seq"] + 1
    metrics = await scrape(daemon)
    assert sample(metrics, "pictl_discrepancies_total", device="door") == 1
    assert sample(metrics, "pictl_external_changes_total", device="door") == 1


async def test_feedback_falling_away_while_on_is_external(daemon: Daemon, admin: Client) -> None:
    await admin.call("light.on")
    await admin.call("events.subscribe", {"topics": ["light.*"]})
    assert daemon.plant is not None
    daemon.plant.move_by_hand("light", False)  # the lamp's breaker trips
    events = await events_until(admin, lambda e: e["topic"] == "light.discrepancy")
    assert events[0]["topic"] == "light.state" and events[0]["data"]["state"] == "off"
    assert events[0]["data"]["cause"] == "external" and events[0]["data"]["output"] == "on"
    assert events[-1]["data"] == {"output": "on", "expected": "on", "observed": "off"}


async def test_resume_with_since_seq_replays_what_was_missed(daemon: Daemon) -> None:
    async with open_client(daemon.url) as ws:
        first = Client(ws)
        sub = await first.call("events.subscribe", {"topics": ["*"]})
        await first.call("light.on")
        seen = await events_until(first, lambda e: e["data"].get("state") == "on")
        last_seq, epoch = seen[-1]["seq"], sub["epoch"]
        await first.close()
    # While nobody listens, the door opens and the light goes off.
    async with open_client(daemon.url) as ws:
        other = Client(ws)
        await other.call("door.open")
        await other.call("light.off")
        await other.close()
    async with open_client(daemon.url) as ws:
        again = Client(ws)
        reply = await again.call("events.subscribe", {"topics": ["*"], "since_seq": last_seq, "epoch": epoch})
        assert "resync" not in reply and reply["replayed"] == 4
        replayed = [await next_event(again) for _ in range(reply["replayed"])]
        assert [e["seq"] for e in replayed] == list(range(last_seq + 1, last_seq + 5))
        # The light's output changes first, then its feedback follows.
        assert [(e["topic"], e["data"]["state"], e["data"].get("output")) for e in replayed] == [
            ("door.state", "moving", None), ("door.state", "open", None),
            ("light.state", "on", "off"), ("light.state", "off", "off"),
        ]
        assert reply["seq"] == replayed[-1]["seq"]
        await again.close()


async def test_resume_that_cannot_be_served_says_resync(demo_config: Config) -> None:
    daemon = await started(dataclasses.replace(demo_config, events=EventsConfig(buffer=2, max_pending_bytes=65536)))
    try:
        async with open_client(daemon.url) as ws:
            client = Client(ws)
            for action in ("open", "close"):
                await client.call(f"door.{action}")  # four events; the buffer holds two
            status = await client.call("system.status")
            old = await client.call("events.subscribe", {"topics": ["*"], "since_seq": 0})
            assert old["resync"] is True and old["seq"] == status["seq"] == 4
            other_run = await client.call("events.subscribe", {"topics": ["*"], "since_seq": 4, "epoch": "x"})
            assert other_run["resync"] is True
            future = await client.call("events.subscribe", {"topics": ["*"], "since_seq": 99})
            assert future["resync"] is True
            current = await client.call("events.subscribe", {"topics": ["*"], "since_seq": 4,
                                                             "epoch": status["epoch"]})
            assert current.get("resync") is None and current["replayed"] == 0
            await client.close()
    finally:
        await daemon.stop()


async def test_a_stuck_subscriber_is_cut_off_without_delaying_others(demo_config: Config) -> None:
    daemon = await started(dataclasses.replace(demo_config, events=EventsConfig(buffer=10, max_pending_bytes=65536)))
    try:
        async with open_client(daemon.url, max_queue=1) as stuck_ws, open_client(daemon.url) as ws:
            for link in (stuck_ws, ws):
                await link.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "events.subscribe",
                                            "params": {"topics": ["bulk.*"]}}))
                json.loads(await link.recv())
            healthy = Client(ws)
            # The stuck client never reads again. Push events past it until the
            # socket buffers between us are full and its unsent bytes pass the bound;
            # the healthy client takes each event as it comes.
            blob = "x" * 32768
            sent = 0
            while not daemon.ctx.events.cutoffs and sent < 2000:
                daemon.ctx.events.publish("bulk.data", {"blob": blob, "i": sent})
                event = await next_event(healthy)
                assert event["data"]["i"] == sent
                sent += 1
            metrics = await scrape(daemon)
            assert sample(metrics, "pictl_event_subscriber_cutoffs_total") == 1
            daemon.ctx.events.publish("bulk.data", {"last": True})
            assert (await next_event(healthy))["data"] == {"last": True}  # the healthy one is still served
            with pytest.raises(ConnectionClosed) as closed:
                async with asyncio.timeout(20):
                    while True:
                        await stuck_ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
            assert "since_seq" in closed.value.rcvd.reason
            await healthy.close()
    finally:
        await daemon.stop()


async def test_system_status_reports_seq_for_resync(admin: Client) -> None:
    before = await admin.call("system.status")
    await admin.call("light.on")
    after = await admin.call("system.status")
    assert after["seq"] == before["seq"] + 2 and after["epoch"] == before["epoch"]  # moving-less switch: 2 events
    assert after["devices"]["light"]["state"]["state"] == "on"


# -- metrics ------------------------------------------------------------------------------------

async def http_text(daemon: Daemon, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    status, _, body = await http_get(daemon, path, headers)
    return status, body.decode()


async def scrape(daemon: Daemon) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = await http_text(daemon, "/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def sample(metrics: dict[Any, float], name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_after_real_calls(daemon: Daemon, admin: Client) -> None:
    await admin.call("door.open")
    await admin.call("sim.fault", {"device": "light", "fault": "no_feedback"})
    await admin.error("light.on", {"timeout": 0.1})
    await admin.error("no.such.method")
    m = await scrape(daemon)
    assert sample(m, "pictl_rpc_requests_total", method="door.open", outcome="ok") == 1
    assert sample(m, "pictl_rpc_requests_total", method="light.on", outcome="not_confirmed") == 1
    assert sample(m, "pictl_rpc_requests_total", method="unknown", outcome="method_not_found") == 1
    assert sample(m, "pictl_rpc_duration_seconds_count", method="door.open") == 1
    assert sample(m, "pictl_action_confirm_seconds_count", device="door", action="open") == 1
    assert 0.9 * TRAVEL_S < sample(m, "pictl_action_confirm_seconds_sum", device="door", action="open") < 1.0
    assert sample(m, "pictl_action_failures_total", device="light", action="on", reason="not_confirmed") == 1
    assert sample(m, "pictl_device_online", device="door") == 1
    assert sample(m, "pictl_ws_connections") == 1
    assert sample(m, "process_resident_memory_bytes") > 0


async def test_metric_labels_never_carry_client_strings(daemon: Daemon, admin: Client) -> None:
    hostile = 'door.open"} 1\nevil_metric{a="'
    await admin.error(hostile)
    await admin.raw('{"jsonrpc": "2.0", "method": 7, "id": "x"}')
    status, text = await http_text(daemon, "/metrics")
    assert status == 200 and "evil" not in text
    labels = {v for fam in text_string_to_metric_families(text) for s in fam.samples
              for k, v in s.labels.items() if k == "method"}
    assert labels <= set(daemon.ctx.dispatcher.names()) | {"unknown"}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (CI installs it)")
async def test_promtool_accepts_the_exposition(daemon: Daemon, admin: Client) -> None:
    await admin.call("door.open")
    _, text = await http_text(daemon, "/metrics")
    checked = subprocess.run(["promtool", "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()


async def test_metrics_can_require_a_scrape_token(demo_config: Config) -> None:
    daemon = await started(dataclasses.replace(demo_config, metrics=MetricsConfig(tokens=("demo-admin",))))
    try:
        assert (await http_text(daemon, "/metrics"))[0] == 401
        assert (await http_text(daemon, "/metrics", {"Authorization": f"Bearer {PANEL}"}))[0] == 401
        status, text = await http_text(daemon, "/metrics", {"Authorization": f"Bearer {ADMIN}"})
        assert status == 200 and "pictl_auth_failures_total 2.0" in text
    finally:
        await daemon.stop()


# -- audit --------------------------------------------------------------------------------------

async def test_audit_trail_records_every_action_without_secrets(demo_config: Config, tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audited = dataclasses.replace(demo_config, audit=AuditConfig(file=str(path), max_bytes=1 << 20, backups=1,
                                                                 fsync=True))
    daemon = await started(audited)
    try:
        async with open_client(daemon.url, PANEL) as ws:
            client = Client(ws)
            await client.call("door.open", {"timeout": 1.5})
            # Written and flushed as the action finished, before anything is closed.
            entries = [json.loads(line) for line in path.read_text().splitlines()]
            assert len(entries) == 1
            await client.error("door.open", {"colour": "red"})
            await client.close()
        async with open_client(daemon.url, ADMIN) as ws:
            client = Client(ws)
            await client.call("sim.fault", {"device": "door", "fault": "jammed"})
            await client.error("door.close", {"timeout": 0.1})
            await client.close()
        text = path.read_text()
        entries = [json.loads(line) for line in text.splitlines()]
        assert [(e["method"], e["outcome"]) for e in entries] == [
            ("door.open", "ok"), ("door.open", "invalid_params"), ("sim.fault", "ok"), ("door.close", "not_confirmed")
        ]
        first = entries[0]
        assert first["token"] == "demo-panel" and first["role"] == "panel"
        assert first["peer"].startswith("127.0.0.1:") and first["params"] == {"timeout": 1.5}
        assert first["state"] == "open" and first["changed"] is True and first["elapsed_ms"] >= 900 * TRAVEL_S
        assert first["time"].endswith("Z")
        assert entries[3]["error"]["data"]["recovery"].startswith("actuator released")
        for secret in ("demo-panel\"", "demo-admin\""):  # names appear as values, secrets never as keys' values
            assert text.count(secret) == sum(1 for e in entries if e["token"] == secret[:-1])
    finally:
        await daemon.stop()


async def test_audit_file_rotates_by_size(demo_config: Config, tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    daemon = await started(dataclasses.replace(
        demo_config, audit=AuditConfig(file=str(path), max_bytes=1024, backups=2, fsync=False)))
    try:
        async with open_client(daemon.url) as ws:
            client = Client(ws)
            for _ in range(12):  # ~200 bytes an entry
                await client.call("light.toggle")
            await client.close()
    finally:
        await daemon.stop()
    rotated = tmp_path / "audit.jsonl.1"
    assert rotated.exists() and path.stat().st_size <= 1024
    lines = [json.loads(line) for p in (tmp_path / "audit.jsonl.2", rotated, path) if p.exists()
             for line in p.read_text().splitlines()]
    assert lines and all(e["method"] == "light.toggle" for e in lines)
