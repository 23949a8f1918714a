"""The MQTT bridge against a real Mosquitto (Debian's, started here on a free loopback port), on the demo
plant: discovery, confirmed and failed commands, retained and malformed commands, request/response,
last will, reconnect (README, *Home Assistant and MQTT*). A client of our own plays Home Assistant."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client.parser import text_string_to_metric_families

from controller.service import configfile as config
from controller.service.daemon import Daemon
from tests.conftest import (
    ADMIN,
    DEMO,
    DEMO_TEXT,
    DOOR_TIMEOUT_S,
    NEW_KEY,
    ROOT,
    TEST_TEXT,
    TIME_SCALE,
    edit,
    http_get,
    open_client,
    sim_daemon,
)
from tests.mosquitto import MOSQUITTO, MOSQUITTO_PASSWD, Mosquitto

MISSING = None if MOSQUITTO else "mosquitto is not installed (apt-get install mosquitto)"
if MISSING and os.environ.get("CI"):
    pytest.fail(f"MQTT tests cannot run: {MISSING}; .ci/run installs it", pytrace=False)
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")

PICTL = str(Path(sys.executable).parent / "pictl")
FAST = ("--time-scale", str(TIME_SCALE))  # `pictl serve` on the tests' plant
NODE = "pictl/pi01"
DOOR_TOPICS = (f"{NODE}/door/state", f"{NODE}/door/attributes", f"{NODE}/door/event")
AUTOMATION = """
[auth.roles.automation]
allow = ["door.*", "light.*", "fan.*", "hall_temp.*", "*.state", "system.ping", "system.status", "system.describe",
         "events.*"]
"""


def config_text(url: str, extra: str = "", base: str = TEST_TEXT) -> str:
    """*base* (the demo with the tests' deadlines) on the bridge."""
    return (base + AUTOMATION
            + f'\n[mqtt]\nurl = "{url}"\nnode = "pi01"\nrole = "automation"\nkeepalive = 5\nbackoff_max = 0.5\n'
            + extra)


@dataclass
class Seen:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class Watcher:
    """A client that records everything on the node's and the discovery topics, in arrival order."""

    def __init__(self, port: int) -> None:
        self.client = aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5)
        self.seen: list[Seen] = []
        self._grew = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Watcher:
        await self.client.__aenter__()
        await self.client.subscribe("pictl/#", qos=1)
        await self.client.subscribe("homeassistant/#", qos=1)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._reader is not None
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        await self.client.__aexit__(None, None, None)

    async def _read(self) -> None:
        async for message in self.client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            self.seen.append(Seen(message.topic.value, payload, message.retain))
            self._grew.set()

    def mark(self) -> int:
        return len(self.seen)

    async def wait(self, match: Callable[[Seen], bool], since: int = 0, timeout: float = 10.0) -> Seen:
        """The first message from index *since* on that matches (waiting for it, not sleeping)."""
        async with asyncio.timeout(timeout):
            while True:
                for message in self.seen[since:]:
                    if match(message):
                        return message
                since = len(self.seen)
                self._grew.clear()
                await self._grew.wait()

    async def on(self, topic: str, payload: bytes | None = None, since: int = 0, timeout: float = 10.0) -> Seen:
        return await self.wait(lambda m: m.topic == topic and (payload is None or m.payload == payload), since, timeout)

    def between(self, start: int, topics: tuple[str, ...]) -> list[tuple[str, str]]:
        return [(m.topic, m.payload.decode()) for m in self.seen[start:] if m.topic in topics]


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Mosquitto]:
    b = Mosquitto(tmp_path)
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


@pytest.fixture
async def watcher(broker: Mosquitto) -> AsyncIterator[Watcher]:
    async with Watcher(broker.port) as w:
        yield w


async def start_daemon(url: str, extra: str = "") -> Daemon:
    d = sim_daemon(config.loads(config_text(url, extra), str(DEMO)))
    await d.start()
    return d


@pytest.fixture
async def daemon(broker: Mosquitto, watcher: Watcher) -> AsyncIterator[Daemon]:
    d = await start_daemon(broker.url)
    try:
        await watcher.on(f"{NODE}/availability", b"online")
        yield d
    finally:
        await d.stop()


async def send(client: aiomqtt.Client, topic: str, payload: bytes | str, retain: bool = False) -> None:
    await client.publish(topic, payload, qos=1, retain=retain)


async def metrics(daemon: Daemon) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    _, _, body = await http_get(daemon, "/metrics")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def pin_level(daemon: Daemon, pin: int) -> bool:
    assert daemon.plant is not None
    return bool(daemon.plant.gpio_factory.pin(pin).state)


# -- discovery and state ----------------------------------------------------------------------------
async def test_discovery_availability_and_state_are_retained_for_every_kind(daemon: Daemon, broker: Mosquitto) -> None:
    async with Watcher(broker.port) as late:  # a Home Assistant that starts after pictl: only retained messages
        door = (await late.on("homeassistant/cover/pi01/door/config")).json()
        light = (await late.on("homeassistant/switch/pi01/light/config")).json()
        fan = (await late.on("homeassistant/switch/pi01/fan/config")).json()
        temp = (await late.on("homeassistant/sensor/pi01/hall_temp/config")).json()
        event = (await late.on("homeassistant/event/pi01/door_command/config")).json()
        assert (await late.on(f"{NODE}/availability")).payload == b"online"
        assert (await late.on(f"{NODE}/door/state")).payload == b"closed"
        assert (await late.on(f"{NODE}/light/state")).payload == b"OFF"
        assert (await late.on(f"{NODE}/fan/state")).payload == b"OFF"
        assert (await late.on(f"{NODE}/door/availability")).payload == b"online"
        reading = await late.wait(lambda m: m.topic == f"{NODE}/hall_temp/state" and m.payload != b"None")
        float(reading.payload)
        assert all(m.retain for m in late.seen if m.topic.startswith("homeassistant/"))
    assert door["device_class"] == "door" and door["unique_id"] == "pictl_pi01_door"
    assert door["command_topic"] == f"{NODE}/door/set" and door["state_topic"] == f"{NODE}/door/state"
    assert [a["topic"] for a in door["availability"]] == [f"{NODE}/availability", f"{NODE}/door/availability"]
    assert door["availability_mode"] == "all" and door["optimistic"] is False
    assert door["device"]["identifiers"] == ["pictl_pi01"] and door["origin"]["name"] == "pictl"
    assert light["unique_id"] == "pictl_pi01_light" and fan["unique_id"] == "pictl_pi01_fan"
    assert (temp["unit_of_measurement"], temp["device_class"], temp["state_class"]) == (
        "°C", "temperature", "measurement")
    assert event["state_topic"] == f"{NODE}/door/event"
    values = await metrics(daemon)
    assert values[("pictl_mqtt_connected", ())] == 1.0
    # Nagle off on the bridge's socket (LIBRARIES.md: 88 ms instead of ~1 ms per request/response with it on).
    assert daemon.mqtt is not None and daemon.mqtt._client is not None
    sock = daemon.mqtt._client._client.socket()
    assert sock is not None and sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


async def test_a_sensor_starting_up_is_never_announced_offline(broker: Mosquitto, watcher: Watcher,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """hall_temp prints its first line about 0.5 s after the start: until then it is available with an
    unknown value, so Home Assistant never shows it unavailable for no reason (issue 26)."""
    caplog.set_level(logging.INFO, logger="controller")
    # The demo itself, at its own pace: the half second before the first line is what is tested.
    d = sim_daemon(config.loads(config_text(broker.url, base=DEMO_TEXT), str(DEMO)), time_scale=1.0)
    await d.start()
    try:
        first = await watcher.wait(lambda m: m.topic == f"{NODE}/hall_temp/state" and m.payload != b"None")
        float(first.payload)
        availability = [m.payload for m in watcher.seen if m.topic == f"{NODE}/hall_temp/availability"]
        assert availability and set(availability) == {b"online"}, availability
        assert not [r.getMessage() for r in caplog.records if "offline" in r.getMessage()]
    finally:
        await d.stop()


def readme_demo_config(broker_url: str) -> tuple[str, list[str]]:
    """README's "Try it on the demo plant": the config its commands write, with *broker_url* for
    127.0.0.1:1883, and the `pictl serve` command line."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("**Try it on the demo plant**", 1)[1].split("\n**", 1)[0]
    appended = block.split("<<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0]
    [serve] = [line.split() for line in block.splitlines() if line.startswith(".venv/bin/pictl serve")]
    assert "mqtt://127.0.0.1:1883" in appended
    return DEMO.read_text() + appended.replace("mqtt://127.0.0.1:1883", broker_url) + "\n", serve


async def test_the_readme_demo_config_runs_beside_make_demo(broker: Mosquitto, watcher: Watcher) -> None:
    text, serve = readme_demo_config(broker.url)
    listen = serve[serve.index("--listen") + 1]
    assert serve[serve.index("--config") + 1] == "/tmp/demo-mqtt.toml" and "--simulate" in serve
    demo = config.load(str(DEMO)).server
    assert listen != f"{demo.host}:{demo.port}"  # beside make demo, not on its port
    d = Daemon(config.loads(text, "/tmp/demo-mqtt.toml"), simulate=True, host="127.0.0.1", port=0)
    await d.start()
    try:
        await watcher.on(f"{NODE}/door/state", b"closed")
        await send(watcher.client, f"{NODE}/door/set", "OPEN")
        await watcher.on(f"{NODE}/door/state", b"open")
        assert (await watcher.on(f"{NODE}/door/attributes")).json()["confirmed"] is True
    finally:
        await d.stop()


async def test_no_mqtt_section_no_bridge_and_no_gauge() -> None:
    d = sim_daemon(config.load(str(DEMO)))
    await d.start()
    try:
        assert d.mqtt is None
        assert not any(name == "pictl_mqtt_connected" for name, _ in await metrics(d))
    finally:
        await d.stop()


def test_aiomqtt_is_imported_only_when_mqtt_is_configured() -> None:
    # Reading an [mqtt] section (check-config) and running the daemon code without one import no MQTT client.
    script = (f"import sys; from controller.service import configfile as config, daemon; "
              f"config.loads({config_text('mqtt://x')!r}, {str(DEMO)!r}); config.load({str(DEMO)!r}); "
              "assert 'aiomqtt' not in sys.modules, 'imported'")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)


async def test_home_assistant_birth_message_gets_everything_announced_again(daemon: Daemon, watcher: Watcher) -> None:
    start = watcher.mark()
    await send(watcher.client, "homeassistant/status", "online")
    await watcher.on("homeassistant/cover/pi01/door/config", since=start)
    await watcher.on(f"{NODE}/door/state", b"closed", since=start)
    await watcher.on(f"{NODE}/availability", b"online", since=start)


# -- commands ---------------------------------------------------------------------------------------
async def test_open_over_mqtt_is_confirmed_by_the_contact(daemon: Daemon, watcher: Watcher) -> None:
    start = watcher.mark()
    await send(watcher.client, f"{NODE}/door/set", "OPEN")
    event = (await watcher.on(f"{NODE}/door/event", since=start)).json()
    assert event == {"event_type": "confirmed", "action": "open"}
    seen = watcher.between(start, DOOR_TOPICS)
    assert [p for t, p in seen if t.endswith("/state")] == ["opening", "open"]
    assert [t for t, _ in seen] == [DOOR_TOPICS[0], DOOR_TOPICS[0], DOOR_TOPICS[1], DOOR_TOPICS[2]]
    attributes = json.loads(seen[2][1])
    assert attributes["confirmed"] is True and attributes["changed"] is True and attributes["error"] is None
    assert attributes["evidence"]["source"] == "door.contact" and attributes["evidence"]["value"] == "open"
    assert pin_level(daemon, 17)  # the relay holds the door open
    # The same dispatcher: counted in the RPC metrics and the action histogram like a WebSocket call.
    values = await metrics(daemon)
    assert values[("pictl_rpc_requests_total", (("method", "door.open"), ("outcome", "ok")))] == 1.0
    assert values[("pictl_action_confirm_seconds_count", (("action", "open"), ("device", "door")))] == 1.0


async def quick_daemon(url: str) -> Daemon:
    """The demo on the bridge with the plant at a tenth of its time and the door's deadline 0.3 s:
    for tests that fail an action on purpose."""
    door = 'open_when = "inactive"\ntimeout = '
    d = sim_daemon(config.loads(edit(config_text(url), f"{door}{DOOR_TIMEOUT_S}", door + "0.3"), str(DEMO)))
    await d.start()
    return d


async def test_attributes_say_the_last_action_whoever_called_it(broker: Mosquitto, watcher: Watcher) -> None:
    """A failed OPEN over MQTT, then a successful door.open over the WebSocket: the retained
    attributes follow the WebSocket's outcome too, in order after the state it left (issue 26)."""
    d = await quick_daemon(broker.url)
    try:
        await watcher.on(f"{NODE}/availability", b"online")
        assert d.plant is not None
        d.plant.inject("door", "jammed")
        start = watcher.mark()
        await send(watcher.client, f"{NODE}/door/set", "OPEN")
        await watcher.on(f"{NODE}/door/event", since=start)
        d.plant.clear("door")
        start = watcher.mark()
        async with open_client(d.url, ADMIN) as ws:
            await ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "door.open"}))
            assert json.loads(await ws.recv())["result"]["confirmed"] is True
        attributes = (await watcher.on(f"{NODE}/door/attributes", since=start)).json()
        assert (attributes["action"], attributes["confirmed"], attributes["error"]) == ("open", True, None)
        assert attributes["evidence"]["source"] == "door.contact"
        assert [t.rsplit("/", 1)[1] for t, _ in watcher.between(start, DOOR_TOPICS)] == [
            "state", "state", "attributes"]  # opening, open, then the outcome; no command event: not MQTT's
        async with Watcher(broker.port) as late:  # what Home Assistant reads when it starts now
            retained = (await late.on(f"{NODE}/door/attributes")).json()
        assert retained["confirmed"] is True and retained["error"] is None
    finally:
        await d.stop()


async def test_a_switch_publishes_its_state_when_it_changes_only(broker: Mosquitto, watcher: Watcher) -> None:
    """TOGGLE from off: the output moves ahead of the feedback (state still off), which must not
    re-publish OFF before ON (issue 26)."""
    d = await quick_daemon(broker.url)
    try:
        await watcher.on(f"{NODE}/light/state", b"OFF")
        start = watcher.mark()
        await send(watcher.client, f"{NODE}/light/set", "TOGGLE")
        await watcher.on(f"{NODE}/light/event", since=start)
        light = (f"{NODE}/light/state", f"{NODE}/light/attributes", f"{NODE}/light/event")
        assert [(t.rsplit("/", 1)[1], p if t.endswith("state") else "") for t, p in watcher.between(start, light)] \
            == [("state", "ON"), ("attributes", ""), ("event", "")]
    finally:
        await d.stop()


async def test_a_jammed_door_keeps_its_observed_state_and_says_why(daemon: Daemon, watcher: Watcher) -> None:
    assert daemon.plant is not None
    daemon.plant.inject("door", "jammed")
    start = watcher.mark()
    await send(watcher.client, f"{NODE}/door/set", "OPEN")
    event = (await watcher.on(f"{NODE}/door/event", since=start)).json()
    assert event == {"event_type": "not_confirmed", "action": "open", "code": -32002}
    seen = watcher.between(start, DOOR_TOPICS)
    assert [p for t, p in seen if t.endswith("/state")] == ["opening", "closed"]  # never "open"
    assert [t for t, _ in seen][-2:] == [DOOR_TOPICS[1], DOOR_TOPICS[2]]
    attributes = json.loads(next(p for t, p in seen if t == DOOR_TOPICS[1]))
    assert attributes["confirmed"] is False
    assert attributes["error"]["code"] == -32002
    assert attributes["error"]["data"]["observed"] == "closed"
    assert attributes["error"]["data"]["recovery"].startswith("actuator released")
    assert not pin_level(daemon, 17)
    values = await metrics(daemon)
    assert values[("pictl_rpc_requests_total", (("method", "door.open"), ("outcome", "not_confirmed")))] == 1.0
    assert values[("pictl_action_failures_total",
                   (("action", "open"), ("device", "door"), ("reason", "not_confirmed")))] == 1.0


async def test_an_offline_fan_is_unavailable_and_its_command_says_so(daemon: Daemon, watcher: Watcher) -> None:
    assert daemon.plant is not None
    start = watcher.mark()
    daemon.plant.inject("fan", "offline")
    await watcher.on(f"{NODE}/fan/availability", b"offline", since=start)
    await send(watcher.client, f"{NODE}/fan/set", "ON")
    event = (await watcher.on(f"{NODE}/fan/event", since=start)).json()
    assert event == {"event_type": "unavailable", "action": "on", "code": -32004}
    daemon.plant.clear("fan")
    await watcher.on(f"{NODE}/fan/availability", b"online", since=start)
    await send(watcher.client, f"{NODE}/fan/set", "ON")
    await watcher.on(f"{NODE}/fan/state", b"ON", since=start)


async def test_retained_and_malformed_commands_never_run(daemon: Daemon, watcher: Watcher,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "controller.bridges.mqtt.bridge")
    start = watcher.mark()
    await send(watcher.client, f"{NODE}/door/set", "OPEN", retain=True)
    for bad in (b"WIGGLE", b"\xff\xfe", b"OPEN" * 40, b""):
        await send(watcher.client, f"{NODE}/door/set", bad)
    await send(watcher.client, f"{NODE}/nosuchdevice/set", "OPEN")
    await send(watcher.client, f"{NODE}/door/set", "CLOSE")  # a probe: commands are handled in order
    await watcher.on(f"{NODE}/door/event", since=start)
    seen = watcher.between(start, DOOR_TOPICS)
    assert [t for t, _ in seen] == [DOOR_TOPICS[1], DOOR_TOPICS[2]]  # the probe's outcome only: nothing moved
    assert json.loads(seen[0][1])["action"] == "close" and json.loads(seen[0][1])["changed"] is False
    assert not pin_level(daemon, 17)
    text = caplog.text
    # One line per reason per 10 s (issue 21): the other three malformed ones are counted in the next.
    assert "ignored a retained command" in text and text.count("ignored a malformed command") == 1
    assert "no such device" in text
    await send(watcher.client, f"{NODE}/door/set", b"", retain=True)  # clear the retained message


async def test_a_retained_open_replayed_on_connect_never_opens_the_door(broker: Mosquitto, watcher: Watcher,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "controller.bridges.mqtt.bridge")
    await send(watcher.client, f"{NODE}/door/set", "OPEN", retain=True)  # left on the broker by someone
    d = await start_daemon(broker.url)
    try:
        await watcher.on(f"{NODE}/availability", b"online")
        start = watcher.mark()
        await send(watcher.client, f"{NODE}/light/set", "ON")  # a probe, after the subscription's replay
        await watcher.on(f"{NODE}/light/event", since=start)
        assert "ignored a retained command" in caplog.text
        assert d.devices["door"].state()["state"] == "closed" and not pin_level(d, 17)
        assert not [m for m in watcher.seen if m.topic == f"{NODE}/door/state" and m.payload != b"closed"]
    finally:
        await d.stop()


async def test_the_role_applies_to_mqtt_commands(broker: Mosquitto, watcher: Watcher) -> None:
    text = config_text(broker.url).replace('"door.*", "light.*"', '"light.*"')
    d = sim_daemon(config.loads(text, str(DEMO)))
    await d.start()
    try:
        await watcher.on(f"{NODE}/availability", b"online", since=watcher.mark())
        start = watcher.mark()
        await send(watcher.client, f"{NODE}/door/set", "OPEN")
        event = (await watcher.on(f"{NODE}/door/event", since=start)).json()
        assert event == {"event_type": "unauthorized", "action": "open", "code": -32001}
        assert not pin_level(d, 17)
    finally:
        await d.stop()


async def test_mqtt_commands_are_rate_limited_and_audited_like_websocket_calls(
        broker: Mosquitto, watcher: Watcher, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "controller.security.audit")
    text = config_text(broker.url).replace('\n         "events.*"]', '\n         "events.*"]\nrate = 0.1\nburst = 1')
    d = sim_daemon(config.loads(text, str(DEMO)))
    await d.start()
    try:
        await watcher.on(f"{NODE}/availability", b"online", since=watcher.mark())
        start = watcher.mark()
        await send(watcher.client, f"{NODE}/light/set", "ON")
        await send(watcher.client, f"{NODE}/light/set", "OFF")  # over the role's allowance
        first = (await watcher.on(f"{NODE}/light/event", since=start)).json()
        second = (await watcher.wait(lambda m: m.topic == f"{NODE}/light/event" and m.json() != first,
                                     since=start)).json()
        # The refusal comes at once; the confirmation after the lamp's feedback.
        assert sorted([first, second], key=lambda e: e["action"]) == [
            {"event_type": "rate_limited", "action": "off", "code": -32005},
            {"event_type": "confirmed", "action": "on"}]
        audited = [json.loads(r.getMessage().removeprefix("audit ")) for r in caplog.records
                   if r.name == "controller.security.audit"]
        assert [(a["method"], a["token"], a["role"], a["outcome"]) for a in audited] == [
            ("light.on", "mqtt:pi01", "automation", "ok")]
    finally:
        await d.stop()


# -- request/response -------------------------------------------------------------------------------
class Requester:
    """An MQTT 5 client doing request/response on pictl/pi01/rpc."""

    def __init__(self, client: aiomqtt.Client, reply_topic: str) -> None:
        self.client = client
        self.reply_topic = reply_topic
        self.counter = 0

    async def ask(self, payload: bytes | str, timeout: float = 10.0) -> tuple[bytes, bytes | None]:
        self.counter += 1
        correlation = f"c{self.counter}".encode()
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = correlation
        await self.client.publish(f"{NODE}/rpc", payload, qos=1, properties=props)
        async with asyncio.timeout(timeout):
            async for message in self.client.messages:
                got = getattr(message.properties, "CorrelationData", None)
                assert got == correlation, (got, correlation)
                return bytes(message.payload), got  # type: ignore[arg-type]
        raise AssertionError("no reply")


@pytest.fixture
async def requester(broker: Mosquitto) -> AsyncIterator[Requester]:
    async with aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.subscribe("test/replies/1", qos=1)
        yield Requester(client, "test/replies/1")


async def test_rpc_replies_are_exactly_the_websockets(daemon: Daemon, requester: Requester) -> None:
    frames = [
        '{"jsonrpc":"2.0","id":1,"method":"system.ping"}',
        '{"jsonrpc":"2.0","id":"x","method":"no.such"}',
        '{"jsonrpc":"2.0","id":2,"method":"system.ping","params":{"bogus":1}}',
        "{not json",
        "[]",
        '[{"jsonrpc":"2.0","id":1,"method":"system.ping"},{"jsonrpc":"2.0","method":"system.ping"},'
        '{"jsonrpc":"2.0","id":2,"method":"door.state"},7,{"jsonrpc":"2.0","id":3,"method":"nope"}]',
    ]
    async with open_client(daemon.url, ADMIN) as ws:
        for frame in frames:
            await ws.send(frame)
            expected = await ws.recv()
            reply, correlation = await requester.ask(frame)
            assert reply.decode() == expected, frame
            assert correlation == f"c{requester.counter}".encode()
    batch = json.loads(reply)
    assert [m.get("id") for m in batch] == [1, 2, None, 3]
    assert batch[1]["result"]["state"] == "closed" and batch[3]["error"]["code"] == -32601


async def test_rpc_runs_confirmed_actions_with_the_configured_role(daemon: Daemon, requester: Requester,
                                                                  watcher: Watcher) -> None:
    reply, _ = await requester.ask('{"jsonrpc":"2.0","id":1,"method":"light.on"}')
    result = json.loads(reply)["result"]
    assert result["confirmed"] is True and result["evidence"]["source"] == "light.feedback"
    reply, _ = await requester.ask('{"jsonrpc":"2.0","id":2,"method":"sim.fault","params":{"device":"door",'
                                   '"fault":"jammed"}}')
    error = json.loads(reply)["error"]
    assert error["code"] == -32001 and error["data"]["method"] == "sim.fault"
    reply, _ = await requester.ask('{"jsonrpc":"2.0","id":3,"method":"events.subscribe","params":{"topics":["*"]}}')
    assert json.loads(reply)["error"]["code"] == -32600  # events arrive on pictl/N/events/... instead
    # No response topic: a notification. It runs, and nothing answers it.
    start = watcher.mark()
    await requester.client.publish(f"{NODE}/rpc", '{"jsonrpc":"2.0","id":4,"method":"light.off"}', qos=1)
    await watcher.on(f"{NODE}/light/state", b"OFF", since=start)
    await watcher.on(f"{NODE}/events/light.state", since=start)
    values = await metrics(daemon)
    assert values[("pictl_rpc_requests_total", (("method", "light.on"), ("outcome", "ok")))] == 1.0
    assert values[("pictl_rpc_requests_total", (("method", "sim.fault"), ("outcome", "unauthorized")))] == 1.0


async def test_rpc_replies_never_land_on_pictl_or_discovery_topics(daemon: Daemon, requester: Requester,
                                                                   watcher: Watcher,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "controller.bridges.mqtt.bridge")
    start = watcher.mark()
    for target in (f"{NODE}/door/set", "homeassistant/cover/pi01/door/config", "test/+/x"):
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = target
        props.CorrelationData = b"evil"
        await requester.client.publish(f"{NODE}/rpc", '{"jsonrpc":"2.0","id":1,"method":"door.state"}', qos=1,
                                       properties=props)
    await requester.ask('{"jsonrpc":"2.0","id":2,"method":"system.ping"}')  # a probe: handled after those
    assert caplog.text.count("an rpc request whose response topic") == 1  # one line per 10 s, the rest counted
    assert not [m for m in watcher.seen[start:] if b'"result"' in m.payload]  # no reply went anywhere


# -- the link ---------------------------------------------------------------------------------------
async def test_reconnects_after_the_broker_restarts_and_republishes_everything(daemon: Daemon, broker: Mosquitto,
                                                                              tmp_path: Path) -> None:
    assert daemon.mqtt is not None
    await broker.stop(kill=True)
    async with asyncio.timeout(5):  # the bridge notices the broker is gone (it clears ready as it does)
        while daemon.mqtt.ready.is_set():
            await asyncio.sleep(0.02)
    assert (await metrics(daemon))[("pictl_mqtt_connected", ())] == 0.0
    # While the broker is away the door opens (over the WebSocket): the state published later must say so.
    async with open_client(daemon.url, ADMIN) as ws:
        await ws.send('{"jsonrpc":"2.0","id":1,"method":"door.open"}')
        assert json.loads(await ws.recv())["result"]["confirmed"] is True
    again = Mosquitto(tmp_path, port=broker.port)  # same port, nothing retained: all of it comes from the bridge
    await again.start()
    try:
        async with Watcher(again.port) as w:
            await w.on("homeassistant/cover/pi01/door/config")
            await w.on(f"{NODE}/availability", b"online")
            await w.on(f"{NODE}/door/availability", b"online")
            await w.on(f"{NODE}/door/state", b"open")
            assert daemon.mqtt.connects >= 2
            start = w.mark()
            await send(w.client, f"{NODE}/door/set", "CLOSE")  # and commands work again
            await w.on(f"{NODE}/door/state", b"closed", since=start)
            assert (await metrics(daemon))[("pictl_mqtt_connected", ())] == 1.0
    finally:
        await again.stop()


async def test_a_clean_stop_says_offline_and_a_reload_removes_devices(broker: Mosquitto, watcher: Watcher) -> None:
    d = await start_daemon(broker.url)
    try:
        await watcher.on(f"{NODE}/availability", b"online")
        await watcher.on("homeassistant/switch/pi01/light/config")
        start = watcher.mark()
        text = config_text(broker.url)
        without_light = text.replace(text[text.index("[devices.light]"):text.index("# A Modbus TCP link")], "")
        await d.apply(config.loads(without_light, str(DEMO)))
        removed = await watcher.on("homeassistant/switch/pi01/light/config", since=start)
        assert removed.payload == b""
        assert (await watcher.on("homeassistant/event/pi01/light_command/config", since=start)).payload == b""
        assert (await watcher.on(f"{NODE}/light/state", since=start)).payload == b""
        kept = [m.topic for m in watcher.seen[start:] if m.topic.endswith("/config") and m.payload]
        assert "homeassistant/cover/pi01/door/config" in kept
        assert not [t for t in kept if "/light" in t]
    finally:
        start = watcher.mark()
        await d.stop()
    await watcher.on(f"{NODE}/availability", b"offline", since=start)


async def test_a_command_in_flight_at_shutdown_finishes_and_is_published_before_offline(
        broker: Mosquitto, watcher: Watcher) -> None:
    d = await start_daemon(broker.url)
    try:
        await watcher.on(f"{NODE}/availability", b"online")
        start = watcher.mark()
        await send(watcher.client, f"{NODE}/door/set", "OPEN")
        await watcher.on(f"{NODE}/door/state", b"opening", since=start)
    finally:
        await d.stop()  # while the door travels
    offline = await watcher.on(f"{NODE}/availability", b"offline", since=start)
    seen = watcher.between(start, (*DOOR_TOPICS, f"{NODE}/availability"))
    assert [t.rsplit("/", 1)[1] for t, _ in seen] == ["state", "state", "attributes", "event", "availability"]
    assert seen[1][1] == "open" and json.loads(seen[3][1])["event_type"] == "confirmed"
    assert offline.payload == b"offline"


async def test_the_last_will_marks_a_killed_daemon_offline(broker: Mosquitto, watcher: Watcher,
                                                          tmp_path: Path) -> None:
    path = tmp_path / "pictl.toml"
    path.write_text(config_text(broker.url))
    proc = await asyncio.create_subprocess_exec(PICTL, "serve", "--config", str(path), "--simulate", *FAST,
                                                "--listen", "127.0.0.1:0", stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.DEVNULL)
    try:
        await watcher.on(f"{NODE}/availability", b"online", timeout=30)
        start = watcher.mark()
        proc.send_signal(signal.SIGKILL)  # no goodbye: only the broker can say it
        await proc.wait()
        will = await watcher.on(f"{NODE}/availability", since=start)
        assert will.payload == b"offline"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.skipif(MOSQUITTO_PASSWD is None, reason="mosquitto_passwd is not installed")
async def test_tls_and_a_password_from_a_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    cert, key = tmp_path / "broker.pem", tmp_path / "broker.key"
    subprocess.run(["openssl", "req", "-x509", *NEW_KEY, "-nodes", "-days", "1", "-subj", "/CN=broker",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    secret = "correct-horse-battery"
    assert MOSQUITTO_PASSWD is not None
    subprocess.run([MOSQUITTO_PASSWD, "-b", "-c", str(tmp_path / "passwd"), "pi01", secret], check=True, timeout=30)
    (tmp_path / "mqtt.pass").write_text(secret + "\n")
    (tmp_path / "mqtt.pass").chmod(0o600)
    tls = Mosquitto(tmp_path, extra=f"certfile {cert}\nkeyfile {key}\npassword_file {tmp_path / 'passwd'}")
    await tls.start()
    try:
        extra = f'username = "pi01"\npassword_file = "{tmp_path / "mqtt.pass"}"\ncafile = "{cert}"\n'
        d = await start_daemon(f"mqtts://127.0.0.1:{tls.port}", extra)
        try:
            assert d.mqtt is not None
            await asyncio.wait_for(d.mqtt.ready.wait(), 10)
            context = ssl.create_default_context(cafile=str(cert))
            async with aiomqtt.Client("127.0.0.1", tls.port, username="pi01", password=secret,
                                      tls_context=context, protocol=aiomqtt.ProtocolVersion.V5) as client:
                await client.subscribe(f"{NODE}/availability")
                async with asyncio.timeout(10):
                    async for message in client.messages:
                        assert message.payload == b"online"
                        break
        finally:
            await d.stop()
    finally:
        await tls.stop()
    assert secret not in caplog.text


async def test_an_unreadable_password_file_stops_serve_with_one_clear_line(tmp_path: Path) -> None:
    """Read when the config loads, like every secret file: check-config and serve say so with FILE:LINE."""
    (tmp_path / "mqtt.pass").write_bytes(b"\xff\xfe not text")
    (tmp_path / "mqtt.pass").chmod(0o600)
    path = tmp_path / "pictl.toml"
    login = f'username = "pi01"\npassword_file = "{tmp_path / "mqtt.pass"}"\n'
    path.write_text(config_text("mqtt://127.0.0.1:9", login))
    proc = await asyncio.create_subprocess_exec(PICTL, "serve", "--config", str(path), "--simulate", *FAST, "--listen",
                                                "127.0.0.1:0", stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert f"{path}:" in err.decode() and "mqtt.password_file: cannot read" in err.decode()
    assert "not UTF-8 text" in err.decode() and "Traceback" not in err.decode()
