"""Modbus driver on pymodbus: coils and registers as points, one :class:`ModbusLink` per bus.

A link is one TCP connection or one RS-485 serial port, shared by every
device on it. pymodbus is used with ``retries=0`` and no reconnect of its own
(``reconnect_delay=0``): the link owns the policy. Requests on a link are
serialized with an :class:`asyncio.Lock` (RTU is half-duplex, and a late TCP
reply must never be taken for the answer to the next request: after a timeout
the connection is closed and opened afresh).

Health is kept per device id: ``offline_after`` consecutive failed requests
(timeouts, lost connection) put that device's points offline with a reason;
the first successful request puts them back. While every device is offline
the link retries with a delay that doubles from 0.1 s up to ``backoff_max``.
An exception reply is an answer (the device is there): it fails the request,
is counted, and marks only the points it concerns.

Points are polled every ``poll_interval`` in as few requests as their
addresses allow (:func:`drivers.modbus_points.plan_reads`). A changed value is
an observation, like a GPIO edge; a register group that holds NaN or an
infinity is never observed: its point goes offline until it reads a number.
A sensor's values on one device (:meth:`ModbusLink.source`, an energy meter)
are announced as one reading per poll round that read them all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType

from drivers.backoff import Backoff
from drivers.base import Point, PointError, PointUnavailable
from drivers.modbus_points import ModbusInput, ModbusMeter, ModbusOutput, ReadGroup, plan_reads
from drivers.modbus_spec import (
    ModbusAddress,
    ModbusLinkConfig,
    ModbusPointSpec,
    ModbusSensorSpec,
    decode,
    describe,
    encode,
    is_number,
)

__all__ = ["ModbusInput", "ModbusLink", "ModbusMeter", "ModbusOutput", "decode", "encode", "plan_reads"]

log = logging.getLogger(__name__)
# pymodbus logs every timeout at ERROR with a frame dump; the link reports each outage once itself.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

BACKOFF_START = 0.1  # first reconnect delay, seconds; doubles up to the link's backoff_max
STALL_ROUNDS = 10  # a poll loop that has not finished a round in this many of its own worst cases is wedged
EXCEPTION_NAMES = {
    1: "illegal function", 2: "illegal data address", 3: "illegal data value", 4: "device failure",
    5: "acknowledge", 6: "device busy", 8: "memory parity error", 10: "gateway path unavailable",
    11: "gateway target failed to respond",
}


class ExceptionReply(PointError):
    """The device answered with a Modbus exception code."""


class NoReply(PointError):
    """The request got no answer (timeout, connection lost or refused)."""


class LinkDown(NoReply):
    """The connection could not be made: nothing on the link can answer."""


# -- the link ----------------------------------------------------------------------------------
class ModbusLink:
    """One Modbus bus (TCP or RTU): serialized requests, polling, reconnects, health.

    A :class:`drivers.base.Bus`: points attached before :meth:`start` are
    put at their safe values and read by the first poll; points attached
    later (a device added or rebuilt by a config reload) get the same from
    the next :meth:`start`, and the polling plan is redone whenever a point
    comes or goes.
    """

    kind = "modbus"

    def __init__(self, config: ModbusLinkConfig) -> None:
        self.config = config
        self.name = config.name  # the [modbus.NAME] key
        self.key = f"modbus:{config.name}"  # what point specs name it by (their bus_key)
        self.owner: str | None = None  # shared by the devices on the link
        self.points: list[ModbusInput] = []  # everything polled on this link
        self.groups: list[ReadGroup] = []  # the polling plan; follows attach() and detach()
        self.meters: list[ModbusMeter] = []  # sensors' sources on this link, told when a round ends
        self._lock = asyncio.Lock()  # one request at a time on the wire
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self._connected_once = False  # the next successful connect is a reconnect
        self._failures: dict[int, int] = {}  # device id -> consecutive failed requests
        self._down: dict[int, str] = {}  # device id -> why it is offline
        self._backoff = Backoff(BACKOFF_START, max(BACKOFF_START, config.backoff_max))
        self._task: asyncio.Task[None] | None = None
        self._started = False  # start() has run: a later start() only brings up new points
        self._arrived: list[ModbusInput] = []  # attached since start(), not yet at their safe value
        self._stopping = False  # the poll loop ends at its next turn
        self._closed = False
        self._round_at = time.monotonic()  # when the poll loop last completed a round (for wedged())
        self._counts = {"requests": 0, "failed_requests": 0, "exception_replies": 0, "timeouts": 0,
                        "reconnects": 0, "polls": 0, "invalid_values": 0}

    # -- points --------------------------------------------------------------------------------
    def input(self, name: str, spec: ModbusPointSpec) -> ModbusInput:
        point = ModbusInput(name, self, spec.at)
        self.attach(point)
        return point

    def output(self, name: str, spec: ModbusPointSpec, *, safe: Any, keep: bool = False) -> ModbusOutput:
        """A coil or register; *safe* is written at start, after failures and at stop (*keep* is
        a GPIO notion: a Modbus output's value is always read before anything is written)."""
        point = ModbusOutput(name, self, spec, safe)
        self.attach(point)
        return point

    def source(self, device: str, spec: ModbusSensorSpec) -> ModbusMeter:
        """A sensor's values on this link (a meter), polled with everything else."""
        meter = ModbusMeter(device, self, spec)
        for point in meter.points:
            self.attach(point)
        self.meters.append(meter)
        return meter

    def attach(self, point: Point) -> None:
        if not isinstance(point, ModbusInput) or point.link is not self:
            raise TypeError(f"{point.name} is not a point of modbus link {self.name}")
        if point not in self.points:
            self.points.append(point)
            self.groups = plan_reads(self.points)
            if self._started:
                self._arrived.append(point)

    def detach(self, point: Point) -> None:
        if point in self.points:
            self.points.remove(point)
            self.groups = plan_reads(self.points)
        self.meters = [m for m in self.meters if not m.closed]
        if point in self._arrived:
            self._arrived.remove(point)

    async def _bring_up(self, point: ModbusInput) -> None:
        """A point attached while the link runs: safe value, then a first read."""
        if isinstance(point, ModbusOutput) and point.safe is not None:
            try:
                await point.write(point.safe)
            except PointError as exc:
                log.warning("%s: could not write the safe value: %s", point.name, exc.observed)
                return
        try:
            await point.refresh()
            point.exception = None
        except ExceptionReply as exc:
            self._point_exception(point, exc.observed)
            return
        except PointError:
            return  # the link's health already says why
        self._point_health(point)

    def counters(self) -> dict[str, int]:
        """Request and health counts for metrics."""
        return dict(self._counts)

    @property
    def where(self) -> str:
        c = self.config
        return f"{c.host}:{c.port}" if c.transport == "tcp" else str(c.port)

    def wedged(self) -> str | None:
        """The poll loop has not completed a round for far longer than any round can take.

        A round is bounded: every request has the link's timeout, so a round of
        N groups takes at most N timeouts plus a connect; a loop that misses
        :data:`STALL_ROUNDS` of those is stuck (a request that never returns).
        """
        if self._task is None or self._closed:
            return None
        if self._task.done():
            return "poll loop ended" if not self._stopping else None
        worst = self.config.poll_interval + self.config.backoff_max + (len(self.groups) + 2) * self.config.timeout
        stalled = time.monotonic() - self._round_at
        if stalled > STALL_ROUNDS * worst:
            return f"no poll completed for {stalled:.0f} s"
        return None

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect, drive outputs to their safe values, poll once, then keep polling.

        On a running link: bring the points attached since up (safe value, first read)."""
        if self._started:
            arrived, self._arrived = self._arrived, []
            for point in arrived:
                await self._bring_up(point)
            return
        self.groups = plan_reads(self.points)
        if not await self._connect():
            self._fail_all(f"cannot connect to {self.where}")
        else:
            for point in list(self.points):
                if isinstance(point, ModbusOutput) and point.safe is not None \
                        and point.spec.at.device_id not in self._down:  # a silent unit costs one timeout each
                    try:
                        await point.write(point.safe)
                    except PointError as exc:
                        log.warning("%s: could not write the safe value: %s", point.name, exc.observed)
            await self.poll(skip_down=True)
        self._started = True
        self._round_at = time.monotonic()
        self._task = asyncio.create_task(self._run(), name=f"modbus {self.name}")

    async def stop(self) -> None:
        """Stop polling, outputs to their safe values (best effort), close the connection."""
        if self._closed:
            return
        self._stopping = True
        task = self._task
        # On Python 3.11 asyncio.wait_for (inside pymodbus) can swallow a cancel that races with
        # its reply: cancel again until the task is really done, never await it unbounded.
        deadline = time.monotonic() + 2 * self.config.timeout + 1.0
        while task is not None and not task.done() and time.monotonic() < deadline:
            task.cancel()
            await asyncio.wait({task}, timeout=0.05)
        if task is not None and not task.done():
            log.warning("modbus %s: poll task did not stop", self.name)
        for point in list(self.points):
            if isinstance(point, ModbusOutput) and point.safe is not None and point.online:
                try:
                    await self.write(point.spec.at, point.safe)
                except PointError as exc:
                    log.warning("%s: safe value not written at shutdown: %s", point.name, exc.observed)
        self._closed = True
        self._disconnect()
        for point in list(self.points):
            point.close()

    def _make_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        c = self.config
        common: dict[str, Any] = {"timeout": c.timeout, "retries": 0, "reconnect_delay": 0,
                                  "name": f"pictl {c.name}"}
        if c.transport == "tcp":
            return AsyncModbusTcpClient(c.host, port=int(c.port), **common)
        return AsyncModbusSerialClient(str(c.port), framer=FramerType.RTU, baudrate=c.baudrate,
                                       bytesize=c.bytesize, parity=c.parity, stopbits=c.stopbits, **common)

    async def _connect(self) -> bool:
        if self._client is None:
            self._client = self._make_client()
        try:
            ok = await self._client.connect()
        except Exception as exc:  # a serial port that vanished raises from pyserial
            log.debug("modbus %s: connect failed: %s", self.name, exc)
            ok = False
        if ok:
            if self._connected_once:
                self._counts["reconnects"] += 1
                log.debug("modbus %s: reconnected to %s", self.name, self.where)  # "answers again" is the news
            self._connected_once = True
        return bool(ok)

    def _disconnect(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def _run(self) -> None:
        interval = self.config.poll_interval
        while not self._stopping:
            started = time.monotonic()
            await self.poll()
            self._round_at = time.monotonic()
            if self.points and len(self._down) >= len({p.source.device_id for p in self.points}):
                delay = self._backoff.next()  # nobody answers: back off
            else:
                delay = interval - (time.monotonic() - started)
            await asyncio.sleep(max(0.0, delay))

    async def poll(self, skip_down: bool = False) -> None:
        """Read every group once; a device that fails is not asked again this round.

        With *skip_down* (at start) devices already offline are not asked at all.
        """
        self._counts["polls"] += 1
        started = time.monotonic()
        failed: set[int] = set(self._down) if skip_down else set()
        for group in list(self.groups):
            if group.device_id in failed:
                continue
            try:
                raw = await self._read_raw(group.device_id, group.table, group.start, group.count)
            except ExceptionReply as exc:
                for point in group.members:
                    self._point_exception(point, exc.observed)
                continue
            except LinkDown:
                return  # every other group would wait for the same connect timeout
            except PointError:
                failed.add(group.device_id)
                continue
            for point in group.members:
                at = point.source
                offset = at.address - group.start
                number = decode(at, raw[offset: offset + at.width])
                point.exception = None
                if not is_number(number):
                    self._point_invalid(point, number)
                    continue
                value = point.from_raw(number)
                point.invalid, point.read_at = None, time.monotonic()
                if point.last is None or point.last.value != value or not point.online:
                    point.observe(value)
                self._point_health(point)
        for meter in list(self.meters):
            meter.round_done(started)

    # -- requests ------------------------------------------------------------------------------
    async def read(self, at: ModbusAddress) -> Any:
        """Read one value now (outside the polling plan)."""
        raw = await self._read_raw(at.device_id, at.table, at.address, at.width)
        return decode(at, raw)

    async def write(self, at: ModbusAddress, value: Any) -> None:
        """Write *value* at *at*; raises ExceptionReply, NoReply or PointUnavailable."""
        payload = encode(at, value)
        what = f"write {describe(at)}"
        if at.table == "coil":
            await self._request(at.device_id, what,
                                lambda c: c.write_coil(at.address, bool(payload), device_id=at.device_id))
        elif isinstance(payload, list) and len(payload) == 1:
            await self._request(at.device_id, what,
                                lambda c: c.write_register(at.address, payload[0], device_id=at.device_id))
        elif isinstance(payload, list):
            await self._request(at.device_id, what,
                                lambda c: c.write_registers(at.address, payload, device_id=at.device_id))

    async def _read_raw(self, device_id: int, table: str, start: int, count: int) -> list[Any]:
        calls: dict[str, Callable[[Any], Awaitable[Any]]] = {
            "coil": lambda c: c.read_coils(start, count=count, device_id=device_id),
            "discrete": lambda c: c.read_discrete_inputs(start, count=count, device_id=device_id),
            "holding": lambda c: c.read_holding_registers(start, count=count, device_id=device_id),
            "input": lambda c: c.read_input_registers(start, count=count, device_id=device_id),
        }
        reply = await self._request(device_id, f"read {table} {start}+{count} (device {device_id})", calls[table])
        values = reply.bits if table in ("coil", "discrete") else reply.registers
        if len(values) < count:
            raise ExceptionReply(f"short reply: {len(values)} of {count} values", device_id=device_id)
        return list(values[:count])

    async def _request(self, device_id: int, what: str, call: Callable[[Any], Awaitable[Any]]) -> Any:
        if self._closed:
            raise PointUnavailable("link closed")
        async with self._lock:
            self._counts["requests"] += 1
            if self._client is None or not self._client.connected:
                self._disconnect()
                if not await self._connect():
                    self._fail_all(f"cannot connect to {self.where}")
                    raise LinkDown(f"cannot connect to {self.where}", device_id=device_id)
            assert self._client is not None
            try:
                reply = await call(self._client)
            except asyncio.CancelledError:
                self._disconnect()  # a reply may still come: never read it as the next one's
                raise
            except ModbusException as exc:
                self._disconnect()
                if isinstance(exc, ConnectionException):
                    reason = f"connection to {self.where} lost"
                elif isinstance(exc, ModbusIOException):  # pymodbus's "no (valid) response in time"
                    self._counts["timeouts"] += 1
                    reason = f"no reply within {self.config.timeout:g} s"
                else:
                    reason = f"link error: {exc}"
                self._fail(device_id, reason)
                raise NoReply(reason, device_id=device_id) from None
            if reply.isError():
                self._counts["exception_replies"] += 1
                self._counts["failed_requests"] += 1
                self._succeed(device_id)  # it answered: it is there
                code = getattr(reply, "exception_code", 0)
                observed = f"exception reply {code} ({EXCEPTION_NAMES.get(code, 'unknown')})"
                log.warning("modbus %s: %s: %s", self.name, what, observed)
                raise ExceptionReply(observed, exception_code=code, request=what)
            self._succeed(device_id)
            return reply

    # -- health --------------------------------------------------------------------------------
    def _fail(self, device_id: int, reason: str) -> None:
        self._counts["failed_requests"] += 1
        count = self._failures.get(device_id, 0) + 1
        self._failures[device_id] = count
        if count >= self.config.offline_after:
            self._mark_down(device_id, reason)

    def _fail_all(self, reason: str) -> None:
        """The connection itself failed: it counts against every device on the link."""
        self._counts["failed_requests"] += 1
        for device_id in {p.source.device_id for p in self.points} | {p.at.device_id for p in self.points}:
            count = self._failures.get(device_id, 0) + 1
            self._failures[device_id] = count
            if count >= self.config.offline_after or not self._connected_once:
                self._mark_down(device_id, reason)

    def _mark_down(self, device_id: int, reason: str) -> None:
        first = device_id not in self._down
        self._down[device_id] = reason
        if first:
            log.warning("modbus %s: device %d offline: %s", self.name, device_id, reason)
        for point in self.points:
            if device_id in (point.source.device_id, point.at.device_id):
                point.set_online(False, f"modbus {self.name}: {reason}")

    def _succeed(self, device_id: int) -> None:
        self._failures[device_id] = 0
        self._backoff.reset()
        if self._down.pop(device_id, None) is not None:
            log.info("modbus %s: device %d answers again", self.name, device_id)
            for point in self.points:
                self._point_health(point)

    def _point_exception(self, point: ModbusInput, observed: str) -> None:
        if point.exception != observed:
            point.exception = observed
        point.set_online(False, f"modbus {self.name}: {describe(point.source)}: {observed}")

    def _point_invalid(self, point: ModbusInput, number: Any) -> None:
        reason = f"{describe(point.source)} holds no number ({number})"
        if point.invalid != reason:
            self._counts["invalid_values"] += 1
            log.warning("modbus %s: %s: %s", self.name, point.name, reason)
        point.invalid = reason
        point.set_online(False, f"modbus {self.name}: {reason}")

    def _point_health(self, point: ModbusInput) -> None:
        down = self._down.get(point.source.device_id) or self._down.get(point.at.device_id)
        if down is None and point.exception is None and point.invalid is None and point.last is not None:
            point.set_online(True)
