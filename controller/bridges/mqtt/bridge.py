"""The MQTT front door: a peer of the WebSocket server over the same dispatcher (README, *Home Assistant and MQTT*).

Made from a :class:`controller.runtime.context.Context`. Everything arriving over MQTT runs as
one session with the configured ``role``: the same role check, rate limit, per-device queue,
confirmation and audit as a WebSocket call, because it is a JSON-RPC request to the same
dispatcher. The bridge names no kind: each device says what it announces
(:meth:`Device.ha_entities`), what its events become (:meth:`Device.mqtt_messages`) and what a
command payload asks for (:meth:`Device.mqtt_command`).

- ``PREFIX/NODE/D/set`` (and any ``set_*`` leaf a device announces) runs the action the device
  reads in the payload; its outcome goes to ``.../attributes`` (retained) and ``.../event``.
  ``.../attributes`` follows the audit trail: it says the device's last action whoever called it
  (the WebSocket, WAMP, MQTT), and a command refused before it ran (its role, its rate).
  ``.../state`` is published only from observations (the event bus), so a jammed door never
  shows ``open``, and only when it changes (a switch's output moving ahead of its feedback does
  not re-publish ``OFF``). A retained command (one the broker replays) and a malformed one are
  logged and never run.
- ``PREFIX/NODE/rpc``: MQTT 5 request/response. The reply on the request's
  response topic, with its correlation data, is the WebSocket's reply byte for byte.
- Every event of the bus is mirrored to ``PREFIX/NODE/events/<topic>``.
- Home Assistant discovery (see :mod:`controller.bridges.mqtt.discovery`) is
  published on every connect and when Home Assistant says it is back online.

What arrives is bounded: the Maximum Packet Size announced in CONNECT keeps oversized messages on
the broker; received messages and commands wait in :mod:`controller.bridges.mqtt.intake` (the
oldest message goes first; one command per device runs, the latest waits); rpc requests are capped
in flight by the dispatcher; commands of a connection that dropped are dropped with it.

aiomqtt 2.x does not reconnect by itself: :meth:`MqttBridge._run` does, with a
capped backoff, and republishes availability, discovery and state each time.
The node's last will marks it offline when the link dies without a goodbye.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from controller.settings.mqtt import MqttUnusable

try:
    import aiomqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    from paho.mqtt.subscribeoptions import SubscribeOptions
except ImportError as exc:  # pragma: no cover - depends on the install
    raise MqttUnusable("the [mqtt] section needs the MQTT extra: pip install 'pictl[mqtt]'") from exc
from prometheus_client import Gauge

from controller import __version__
from controller.bridges.mqtt.discovery import OFFLINE, ONLINE, Topics, command_leaves, discovery, outcome
from controller.bridges.mqtt.intake import Backlog, Commands
from controller.bridges.mqtt.quiet import quiet
from controller.devices.outward import MAX_COMMAND_BYTES, BadCommand, MqttMessage
from controller.rpc.dispatch import Answer, request, settled
from controller.runtime.context import Context
from controller.security.auth import Session
from controller.wire import jsonrpc
from controller.wire.errors import DISCONNECTED, OVERFLOW, SUPERSEDED, InvalidRequest
from controller.wire.owned import OwnedTasks, stop_task
from controller.wire.protocol import ERROR_NAMES
from controller.wire.throttle import ThrottledFilter, ThrottledLog
from drivers.backoff import Backoff

log = logging.getLogger(__name__)
CLIENT_LOG = logging.getLogger(__name__ + ".client")  # aiomqtt's and paho's lines: their warnings throttled
LINK_LINES = ("MQTT: {peer}: {detail}", "MQTT: {count} more time(s) ({reason}) in the last {window:.0f} s; "
              "latest {latest}")
# aiomqtt's warnings a flood causes, by message template -> the reason they are counted under
CLIENT_WARNINGS = {"There are %d pending publish calls.": "pending_publishes",
                   "Message queue is full. Discarding message.": "queue_full"}

quiet(CLIENT_LOG)  # a broker going away is routine: no ERROR lines for it (controller/bridges/mqtt/quiet.py)

BACKOFF_START = 0.1  # first reconnect delay, seconds; doubles up to the config's backoff_max
# Announced to the broker as our Maximum Packet Size (MQTT 5): the largest request we take, plus room
# for its topic and properties (response topic, correlation data). A compliant broker (Mosquitto 2)
# drops anything larger instead of sending it: it never reaches this process's memory.
PACKET_HEADROOM = 4096
BACKLOG = 1000  # messages read from the broker and not yet routed; past it the oldest is dropped
PENDING_WARNING = 500  # aiomqtt warns past this many unacknowledged publishes (an announce sends ~30)
GOODBYE_TIMEOUT = 2.0  # at shutdown: how long the final "offline" may take to reach the broker
NODELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # Nagle + delayed ACK cost ~40 ms per hop (LIBRARIES.md)
# retainAsPublished: a command published with the retain flag keeps it even live, so it is
# recognised and ignored whether the broker replays it now or later.
RPC_OPTIONS = SubscribeOptions(qos=1, retainAsPublished=True)
# Commands at QoS 0: on a clean session QoS 1 adds no delivery guarantee over TCP, but it puts the
# broker's per-client window in the way (Mosquitto: 20 in flight, then 1,000 queued, then it drops
# the *newest*): a flood faster than the Pi reads would lose the user's last command at the broker.
# At QoS 0 everything reaches the bridge, whose own backlog drops the oldest (Backlog).
COMMAND_OPTIONS = SubscribeOptions(qos=0, retainAsPublished=True)


def _short(payload: bytes, limit: int = 40) -> str:
    """A client's payload in a log line: bounded, never raw bytes."""
    text = payload[:limit].decode("utf-8", "backslashreplace")
    return repr(text + ("..." if len(payload) > limit else ""))


class MqttBridge:
    """One broker connection that serves the context's devices over MQTT."""

    def __init__(self, ctx: Context) -> None:
        assert ctx.config.mqtt is not None
        self.ctx = ctx
        self.config = config = ctx.config.mqtt
        self.dispatcher = ctx.dispatcher
        self.topics = Topics(config.topic_prefix, config.node)
        # A bigger rpc request is refused, as the WebSocket refuses a frame (and never sent to us at all
        # by a broker that honours the Maximum Packet Size we announce).
        self.max_payload = ctx.config.server.max_frame_bytes
        self.max_packet = self.max_payload + PACKET_HEADROOM
        self.session = self._new_session()
        self.connected = Gauge("pictl_mqtt_connected", "1 while the MQTT bridge is connected to its broker",
                               registry=ctx.metrics.registry)
        self.connects = 0  # successful connections so far (the first, then each reconnect)
        self.ready = asyncio.Event()  # set while connected and announced
        self._client: aiomqtt.Client | None = None  # while connected
        self._runner: asyncio.Task[None] | None = None
        self._tasks = OwnedTasks("mqtt publish")  # publishes and requests in flight
        self._commands = OwnedTasks("mqtt command")  # actions in flight (waited for at shutdown)
        self._announced: dict[str, set[str]] = {}  # device -> its discovery config topics on the broker
        self._attributes: dict[str, bytes] = {}  # device -> its last outcome, republished on reconnect
        self._retained: dict[str, str | bytes] = {}  # device topic -> what it holds on the broker (this connection)
        self._audited: dict[str, int] = {}  # device -> actions audited so far (whoever called)
        self._subscribed: set[str] = set()  # command leaves subscribed on this connection
        # Commands on .../set, per device: at most one of ours running (or waiting for the device) and
        # the latest one behind it. A burst coalesces to its last word, never reorders, costs no task.
        self._waiting = Commands(self._act, self._commands,
                                 ctx.metrics.rpc_dropped.labels(SUPERSEDED).inc)  # one running, the latest waiting
        self._untap: Callable[[], None] | None = None
        self._unaudit: Callable[[], None] | None = None
        self._closing = False
        # What a peer on the broker can make us log at will: one line per reason per 10 s, with the count.
        self.ignored = ThrottledLog(log, "MQTT: ignored {detail} on {peer} ({reason})",
                                    "MQTT: ignored {count} more message(s) ({reason}) in the last {window:.0f} s; "
                                    "latest on {latest}")
        self.failed = ThrottledLog(log, "MQTT: a command on {peer} failed ({reason}): {detail}",
                                   "MQTT: {count} more command(s) failed ({reason}) in the last {window:.0f} s; "
                                   "latest on {latest}")
        self.link_log = ThrottledLog(log, *LINK_LINES)  # a broker that accepts and drops us ten times a second
        self.link_info = ThrottledLog(log, *LINK_LINES, level=logging.INFO)
        self.client_log = ThrottledLog(log, "MQTT client ({reason}): {detail}",
                                       "MQTT client: {count} more warning(s) ({reason}) in the last {window:.0f} s; "
                                       "latest {latest}")
        self._client_filter = ThrottledFilter(self.client_log, CLIENT_WARNINGS, "aiomqtt")
        overflow = ctx.metrics.rpc_dropped.labels(OVERFLOW)
        self._backlog = type("Backlog", (Backlog,), {"dropped": staticmethod(overflow.inc)})

    def _new_session(self) -> Session:
        return Session.for_service(f"mqtt:{self.config.node}", self.ctx.auth.roles[self.config.role],
                                   peer=f"mqtt {self.config.host}:{self.config.port}", address="mqtt")

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start connecting (in the background: a broker that is down does not stop the daemon)."""
        self._untap = self.ctx.events.tap(self._on_event)
        CLIENT_LOG.addFilter(self._client_filter)
        self._unaudit = self.ctx.audit.recorded.add(self._on_audited)
        self._runner = asyncio.get_running_loop().create_task(self._run(), name="mqtt-bridge")

    async def close(self, timeout: float) -> None:
        """Let commands in flight finish (up to *timeout*), say ``offline``, disconnect."""
        self._closing = True
        if not await self._commands.wait(timeout):  # their outcome, and the state it leaves, still go out
            log.warning("%d MQTT command(s) did not finish before shutdown", len(self._commands))
        if self._untap is not None:
            self._untap()
        if self._unaudit is not None:
            self._unaudit()
        client = self._client
        if client is not None:
            try:
                await client.publish(self.topics.availability, OFFLINE, qos=1, retain=True, timeout=GOODBYE_TIMEOUT)
            except (aiomqtt.MqttError, TimeoutError) as exc:
                log.info("MQTT: could not say offline before leaving (%s); the last will says it", exc)
        if self._runner is not None and not await stop_task(self._runner, GOODBYE_TIMEOUT):
            log.warning("MQTT: the bridge's connection task did not stop within %.0f s", GOODBYE_TIMEOUT)
        self._tasks.cancel()
        self.connected.set(0)
        for throttled in (self.ignored, self.failed, self.link_log, self.link_info, self.client_log):
            throttled.close()
        CLIENT_LOG.removeFilter(self._client_filter)

    def config_applied(self) -> None:
        """After a reload: the role may have changed, devices come and go (a removed one is
        removed from Home Assistant with an empty retained config)."""
        if self.config.role in self.ctx.auth.roles:
            self.session = self._new_session()
        if self._client is not None:
            self._announce()

    # -- the connection ---------------------------------------------------------------------------
    def _client_for_attempt(self) -> aiomqtt.Client:
        """A fresh client per attempt (aiomqtt's is reusable, but a new one starts clean)."""
        tls = None
        if self.config.tls:
            tls = ssl.create_default_context(cafile=self.config.cafile)
            tls.minimum_version = ssl.TLSVersion.TLSv1_2
        client = aiomqtt.Client(
            self.config.host, self.config.port,
            identifier=f"pictl-{self.config.node}",
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=True,  # no session state: a command queued while we were away is never replayed
            username=self.config.username, password=self.config.password,
            will=aiomqtt.Will(self.topics.availability, OFFLINE, qos=1, retain=True),
            keepalive=self.config.keepalive,
            timeout=10.0,
            tls_context=tls,
            socket_options=[NODELAY],
            logger=CLIENT_LOG,
            properties=self._connect_properties(),
            max_queued_incoming_messages=BACKLOG,
            queue_type=self._backlog,
        )
        client.pending_calls_threshold = PENDING_WARNING
        return client

    def _connect_properties(self) -> Properties:
        properties = Properties(PacketTypes.CONNECT)
        properties.MaximumPacketSize = self.max_packet
        return properties

    async def _run(self) -> None:
        """Connect, serve, and on any loss reconnect after a delay doubling up to backoff_max."""
        backoff = Backoff(BACKOFF_START, max(BACKOFF_START, self.config.backoff_max), jitter=0.25)
        where = f"{'mqtts' if self.config.tls else 'mqtt'}://{self.config.host}:{self.config.port}"
        while True:
            client = self._client_for_attempt()
            try:
                async with client:
                    self._client = client
                    self.session = self._new_session()  # this connection's: closed when it drops
                    self.connected.set(1)
                    self.connects += 1
                    self.link_info.note("connected", where, f"connected as node {self.config.node}")
                    backoff.reset()
                    await self._serve(client)
            except aiomqtt.MqttError as exc:
                if self._client is not None:
                    self.link_log.note("lost", where, f"lost the broker ({exc}); reconnecting")
                else:
                    self.link_log.note("unreachable", where, f"cannot reach the broker ({exc}); retrying in "
                                       f"{backoff.upcoming:.1f} s")
            except Exception:  # a bug must not end the bridge for good: log it and connect again
                log.exception("MQTT: the link to %s failed; reconnecting", where)
            finally:
                self._client = None
                self.session.closed = True  # its commands not started yet are dropped: nobody hears their outcome
                self.ctx.metrics.rpc_dropped.labels(DISCONNECTED).inc(self._waiting.drop_waiting())
                self.ready.clear()
                self.connected.set(0)
            await asyncio.sleep(backoff.next())

    async def _serve(self, client: aiomqtt.Client) -> None:
        self._subscribed.clear()  # a new connection (clean start): nothing is subscribed yet
        await client.subscribe(self.topics.rpc, options=RPC_OPTIONS)
        if self.config.discovery_prefix:
            await client.subscribe(f"{self.config.discovery_prefix}/status", qos=1)
        self._announce()
        self.ready.set()
        async for message in client.messages:
            try:
                self._route(message)
            except Exception:
                log.exception("MQTT: handling a message on %s failed", message.topic.value)

    def _publish(self, topic: str, payload: str | bytes, *, retain: bool, qos: int = 1,
                 properties: Properties | None = None) -> None:
        """Send without waiting. Tasks start in creation order, so messages leave in call order."""
        client = self._client
        if client is None:
            return  # everything retained is published again on reconnect
        self._tasks.spawn(self._send(client, topic, payload, retain, qos, properties))

    @staticmethod
    async def _send(client: aiomqtt.Client, topic: str, payload: str | bytes, retain: bool, qos: int,
                    properties: Properties | None) -> None:
        try:
            await client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        except (aiomqtt.MqttError, TimeoutError) as exc:
            log.debug("MQTT: publish to %s dropped: %s", topic, exc)

    def _subscribe_commands(self, leaves: set[str]) -> None:
        """Subscribe to the command leaves the devices announce that this connection has not yet."""
        client = self._client
        if client is None:
            return
        for leaf in sorted(leaves - self._subscribed):
            self._subscribed.add(leaf)
            self._tasks.spawn(self._subscribe(client, self.topics.commands(leaf)))

    @staticmethod
    async def _subscribe(client: aiomqtt.Client, topic: str) -> None:
        try:
            await client.subscribe(topic, options=COMMAND_OPTIONS)
        except (aiomqtt.MqttError, TimeoutError) as exc:
            log.debug("MQTT: subscribing to %s failed: %s (the next connection subscribes again)", topic, exc)

    # -- what we publish --------------------------------------------------------------------------
    def _announce(self) -> None:
        """Discovery (and removal of what is gone), then each device's availability, state and
        last outcome, then the node's ``online``: Home Assistant shows fresh values only."""
        devices = self.ctx.devices
        self._retained.clear()  # published afresh below: the new connection's broker holds it all
        entities = {name: device.ha_entities() for name, device in devices.items()}
        self._subscribe_commands({leaf for found in entities.values() for leaf in command_leaves(found)})
        if self.config.discovery_prefix:
            announced: dict[str, set[str]] = {}
            for name in devices:
                messages = discovery(self.config.discovery_prefix, self.topics, name, entities[name], __version__)
                announced[name] = {topic for topic, _ in messages}
                for topic, payload in messages:
                    self._publish(topic, orjson.dumps(payload), retain=True)
            for name, topics in self._announced.items():
                for topic in sorted(topics - announced.get(name, set())):
                    self._publish(topic, b"", retain=True)  # Home Assistant deletes the entity
            gone = set(self._announced) - set(devices)
            self._announced = announced
        else:
            gone = set()
        for name in sorted(gone):
            for leaf in ("state", "availability", "attributes"):
                self._publish(self.topics.device(name, leaf), b"", retain=True)
            self._attributes.pop(name, None)
        for name, device in devices.items():
            self._publish(self.topics.device(name, "availability"), ONLINE if device.online else OFFLINE, retain=True)
            self._publish_device(name, device.mqtt_messages("state", device.state()))
            if name in self._attributes:
                self._publish(self.topics.device(name, "attributes"), self._attributes[name], retain=True)
        self._publish(self.topics.availability, ONLINE, retain=True)

    def _publish_device(self, name: str, messages: list[MqttMessage]) -> None:
        """A device's messages; a retained one only when it changes what the broker holds."""
        for message in messages:
            topic = self.topics.device(name, message.leaf)
            if message.retain:
                if self._retained.get(topic) == message.payload:
                    continue
                self._retained[topic] = message.payload
            self._publish(topic, message.payload, retain=message.retain)

    def _on_event(self, event: dict[str, Any]) -> None:
        """Every event of the bus: mirrored, and each device's own messages (state, alarms) kept current."""
        if self._client is None:
            return
        topic = event["topic"]
        data = event["data"]
        self._publish(self.topics.event(topic), jsonrpc.dumps_bytes(event), retain=False, qos=0)
        if topic == "system.status":
            name = data.get("device")
            if name in self.ctx.devices:
                self._publish(self.topics.device(name, "availability"), ONLINE if data.get("online") else OFFLINE,
                              retain=True)
            return
        name, _, what = topic.rpartition(".")
        device = self.ctx.devices.get(name)
        if device is not None:
            self._publish_device(name, device.mqtt_messages(what, data))

    # -- what arrives -----------------------------------------------------------------------------
    def _route(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        payload = message.payload if isinstance(message.payload, bytes) else str(message.payload or "").encode()
        if topic == self.topics.rpc:
            self._request(message, payload)
        elif self.config.discovery_prefix and topic == f"{self.config.discovery_prefix}/status":
            if payload.strip() == b"online":
                self.link_info.note("announced", topic, "Home Assistant is online: announcing the devices again")
                self._announce()
        else:
            found = self.topics.command(topic)
            if found is not None:
                self._command(*found, payload, message.retain)

    def _command(self, name: str, leaf: str, payload: bytes, retained: bool) -> None:
        where = self.topics.device(_short(name.encode(), 64), leaf)
        if retained:
            self.ignored.note("retained", where, f"a retained command {_short(payload)} (a command the broker "
                              "replays never runs; clear it with an empty retained message)")
            return
        if self._closing:
            self.ignored.note("shutting_down", where, "a command while shutting down")
            return
        device = self.ctx.devices.get(name)
        if device is None:
            self.ignored.note("unknown_device", where, "a command for no such device")
            return
        try:
            if len(payload) > MAX_COMMAND_BYTES:
                raise BadCommand(f"{len(payload)} bytes: a command is a word or a number")
            try:
                text = payload.decode("ascii").strip()
            except UnicodeDecodeError:
                raise BadCommand("not ASCII text") from None
            action, params = device.mqtt_command(leaf, text)
        except BadCommand as exc:
            self.ignored.note("malformed", where, f"a malformed command {_short(payload)} ({exc})")
            return
        self._waiting.submit(name, (self.session, action, params), interrupts=bool(device.actions[action].interrupts))

    async def _act(self, name: str, session: Session, action: str, params: dict[str, Any]) -> None:
        """Run one command as a confirmed action; publish its outcome (state comes from the events)."""
        audited = self._audited.get(name, 0)
        reply = (await settled(self.dispatcher.call(session, request(f"{name}.{action}", params)))).reply
        if reply is None:  # dropped unstarted: the connection it came on is gone
            return
        attributes, event = outcome(action, reply)
        if attributes["error"] is not None:
            error = attributes["error"]
            self.failed.note(ERROR_NAMES.get(error.get("code"), "error"), self.topics.device(name, "set"),
                             f"{action}: {error.get('message')}")
        if self._audited.get(name, 0) == audited:  # refused before it ran (role, rate): not audited
            self._publish_attributes(name, attributes)
        self._publish(self.topics.device(name, "event"), orjson.dumps(event), retain=False)

    def _publish_attributes(self, name: str, attributes: dict[str, Any]) -> None:
        encoded = orjson.dumps(attributes)
        self._attributes[name] = encoded
        self._publish(self.topics.device(name, "attributes"), encoded, retain=True)

    def _on_audited(self, session: Session, method: str, result: dict[str, Any] | None,
                    error: dict[str, Any] | None) -> None:
        """Every action that ran, through whichever front door (a command here, the WebSocket,
        WAMP): its outcome is the device's last one."""
        name, _, action = method.rpartition(".")
        device = self.ctx.devices.get(name)
        if device is None or action not in device.actions:
            return  # sim.*, or a device this bridge does not serve
        if result is None and error is None:
            return  # dropped unstarted (its caller had gone): nothing happened, the last outcome stands
        self._audited[name] = self._audited.get(name, 0) + 1
        attributes, _ = outcome(action, {"error": error} if error is not None else {"result": result})
        self._publish_attributes(name, attributes)

    def _request(self, message: aiomqtt.Message, payload: bytes) -> None:
        """A JSON-RPC request or batch on the rpc topic; answered on its response topic, if any."""
        if message.retain:
            self.ignored.note("retained_request", self.topics.rpc, "a retained request (a replayed request never "
                              "runs)")
            return
        properties = message.properties
        respond = getattr(properties, "ResponseTopic", None) or None
        correlation = getattr(properties, "CorrelationData", None)
        if respond is not None and not self._may_answer_on(respond):
            self.ignored.note("reply_topic", self.topics.rpc, f"an rpc request whose response topic "
                              f"{_short(respond.encode(), 64)} is under pictl's or Home Assistant's prefix, "
                              "or a wildcard")
            return
        if len(payload) > self.max_payload:
            too_big = InvalidRequest(f"request too large: {len(payload)} > {self.max_payload} bytes")
            self._reply(respond, correlation, message.qos, jsonrpc.dumps_bytes(jsonrpc.error(None, too_big)))
            return
        answer = self.dispatcher.call(self.session, jsonrpc.decode(payload, self.dispatcher.max_batch))
        if isinstance(answer, Answer):  # answered at once: no task
            self._reply(respond, correlation, message.qos, answer.frame())
        else:
            self._tasks.spawn(self._answer(answer, respond, correlation, message.qos))

    def _may_answer_on(self, topic: str) -> bool:
        """A reply never lands under pictl's prefix (this node's topics, and any other node's: a reply on
        ``pictl/pi02/door/set`` would be a command to another Pi), under the discovery prefix, on a
        wildcard or on a broker's ``$`` topic."""
        ours = [self.config.topic_prefix]
        if self.config.discovery_prefix:
            ours.append(self.config.discovery_prefix)
        return not ("+" in topic or "#" in topic or topic.startswith("$") or not topic
                    or any(topic == prefix or topic.startswith(f"{prefix}/") for prefix in ours))

    async def _answer(self, answer: Awaitable[Answer], respond: str | None, correlation: bytes | None,
                      qos: int) -> None:
        self._reply(respond, correlation, qos, (await answer).frame())

    def _reply(self, respond: str | None, correlation: bytes | None, qos: int, reply: bytes | None) -> None:
        if respond is None or reply is None:
            return  # no response topic: a notification, executed and never answered
        properties = None
        if correlation is not None:
            properties = Properties(PacketTypes.PUBLISH)
            properties.CorrelationData = correlation
        self._publish(respond, reply, retain=False, qos=min(qos, 1), properties=properties)
