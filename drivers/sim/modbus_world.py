"""Simulated Modbus devices behind a real pymodbus server on 127.0.0.1.

:class:`SimModbusDevices` is the server's datastore: the coils and registers
the configuration uses, per device id, and nothing else (any other address
gets exception 2, illegal data address, as a real device would answer). It
records every request so tests can count them, and has faults:

- ``silent`` device ids get no reply at all (the device is powered off, or its
  cable is cut): the client times out;
- ``failing`` device ids answer every request with exception 4 (device failure);
- ``stuck`` addresses accept writes but keep their value (a relay that does
  not pull in): the read-back disagrees.

:class:`SimModbusServer` serves it over TCP with Modbus TCP framing, or with
RTU framing so that an RTU client reaches it through pyserial's
``socket://127.0.0.1:PORT`` URL.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.server import ModbusTcpServer

from drivers.modbus_spec import ModbusAddress, decode, encode
from drivers.sim.recent import Recent

log = logging.getLogger(__name__)

TABLE_OF = {1: "coil", 5: "coil", 15: "coil", 2: "discrete", 3: "holding", 6: "holding", 16: "holding",
            22: "holding", 23: "holding", 4: "input"}


@dataclass(frozen=True)
class SeenRequest:
    """One request as the simulated device saw it."""

    device_id: int
    function_code: int
    table: str
    address: int
    count: int


class SimModbusDevices(ModbusServerContext):
    """The data of every simulated device on one link, with faults.

    Replaces pymodbus's deprecated datastore classes: the server calls
    ``async_getValues`` / ``async_setValues`` on it directly.
    """

    def __init__(self) -> None:  # no super().__init__: it only builds pymodbus's own datastore
        self.old_simulator = True  # tells the server to call this object directly
        self.simdevices = []
        self.data: dict[tuple[int, str], dict[int, int]] = {}  # (device id, table) -> address -> value
        self.seen: list[SeenRequest] = Recent()  # every request, in order (the newest 10,000)
        self.silent: set[int] = set()  # device ids that do not answer
        self.failing: set[int] = set()  # device ids that answer with exception 4
        self.stuck: set[tuple[int, str, int]] = set()  # (device id, table, address) that ignore writes
        # Physics: called with (device id, table, first address, count) after every accepted write,
        # and before every read (a meter brings its registers up to date).
        self.on_write: list[Callable[[int, str, int, int], None]] = []
        self.on_read: list[Callable[[int, str, int, int], None]] = []

    def map(self, device_id: int, table: str, address: int, count: int = 1, value: int = 0) -> None:
        """Make *count* addresses from *address* exist on a device, with an initial value."""
        block = self.data.setdefault((device_id, table), {})
        for a in range(address, address + count):
            block.setdefault(a, value)

    def value(self, device_id: int, table: str, address: int) -> int:
        return self.data[(device_id, table)][address]

    def set(self, device_id: int, table: str, address: int, value: int) -> None:
        """The world changes a value (someone switches the fan at its own panel)."""
        self.data[(device_id, table)][address] = int(value)

    def reads(self, device_id: int | None = None) -> list[SeenRequest]:
        return [r for r in self.seen if r.function_code in (1, 2, 3, 4)
                and (device_id is None or r.device_id == device_id)]

    def _block(self, device_id: int, func_code: int, address: int, count: int) -> dict[int, int] | ExcCodes:
        if func_code not in (5, 6):  # single writes were recorded by async_setValues; this reads their echo
            self.seen.append(SeenRequest(device_id, func_code, TABLE_OF.get(func_code, "?"), address, count))
        if device_id in self.silent:
            raise NoSuchIdException(f"device {device_id} is silent")  # the server then sends nothing
        if device_id in self.failing:
            return ExcCodes.DEVICE_FAILURE
        block = self.data.get((device_id, TABLE_OF.get(func_code, "?")))
        if block is None or any(a not in block for a in range(address, address + count)):
            return ExcCodes.ILLEGAL_ADDRESS
        return block

    async def async_getValues(self, device_id: int, func_code: int, address: int,
                              count: int = 1) -> list[int] | list[bool] | ExcCodes:
        for hook in tuple(self.on_read):
            hook(device_id, TABLE_OF.get(func_code, "?"), address, count)
        block = self._block(device_id, func_code, address, count)
        if isinstance(block, ExcCodes):
            return block
        values = [block[a] for a in range(address, address + count)]
        return [bool(v) for v in values] if TABLE_OF[func_code] in ("coil", "discrete") else values

    async def async_setValues(self, device_id: int, func_code: int, address: int,
                              values: Sequence[int] | Sequence[bool]) -> ExcCodes | None:
        if func_code in (5, 6):  # the read of the echo that follows is not a request of its own
            self.seen.append(SeenRequest(device_id, func_code, TABLE_OF[func_code], address, len(values)))
            self._check_alive(device_id)
            block = self.data.get((device_id, TABLE_OF[func_code]))
            if device_id in self.failing:
                return ExcCodes.DEVICE_FAILURE
            if block is None or address not in block:
                return ExcCodes.ILLEGAL_ADDRESS
        else:
            found = self._block(device_id, func_code, address, len(values))
            if isinstance(found, ExcCodes):
                return found
            block = found
        table = TABLE_OF[func_code]
        for offset, value in enumerate(values):
            if (device_id, table, address + offset) not in self.stuck:
                block[address + offset] = int(value)
        for hook in tuple(self.on_write):
            hook(device_id, table, address, len(values))
        return None

    def _check_alive(self, device_id: int) -> None:
        if device_id in self.silent:
            raise NoSuchIdException(f"device {device_id} is silent")


class SimModbusServer:
    """A pymodbus server for one simulated link, on 127.0.0.1 and a free port."""

    def __init__(self, name: str, *, rtu: bool = False) -> None:
        self.name = name  # the link it stands for
        self.rtu = rtu  # RTU framing over TCP (reach it with socket://127.0.0.1:PORT)
        self.devices = SimModbusDevices()  # the data and the faults
        self.port = 0  # bound by start()
        self._server: ModbusTcpServer | None = None

    @property
    def url(self) -> str:
        """What an RTU client opens to reach this server."""
        return f"socket://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = ModbusTcpServer(
            self.devices, framer=FramerType.RTU if self.rtu else FramerType.SOCKET,
            address=("127.0.0.1", self.port), ignore_missing_devices=True,
        )
        await self._server.serve_forever(background=True)
        self.port = self._server.transport.sockets[0].getsockname()[1]  # type: ignore[attr-defined]  # a Server
        log.info("simulated Modbus %s (%s) on 127.0.0.1:%d", self.name, "RTU" if self.rtu else "TCP", self.port)

    async def aclose(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            await self._server.shutdown()
            self._server = None


@dataclass
class SilenceFault:
    """A device that stops answering (``sim.fault DEVICE offline``)."""

    devices: SimModbusDevices
    device_id: int

    def inject(self) -> None:
        self.devices.silent.add(self.device_id)

    def clear(self) -> None:
        self.devices.silent.discard(self.device_id)


def follow(sim: SimModbusDevices, source: ModbusAddress, target: ModbusAddress,
           convert: Callable[[Any], Any]) -> Callable[[], None]:
    """Whatever is written at *source* shows up at *target* (converted) at once, unless it is stuck.

    Returns the undo (a device rebuilt by a reload must not leave its old physics behind).
    """
    def on_write(device_id: int, table: str, address: int, count: int) -> None:
        if (device_id, table) != (source.device_id, source.table) \
                or not address <= source.address < address + count:
            return
        words = [sim.value(source.device_id, source.table, source.address + i) for i in range(source.width)]
        raw = encode(target, convert(decode(source, words)))
        for i, word in enumerate([raw] if isinstance(raw, bool) else raw):
            if (target.device_id, target.table, target.address + i) not in sim.stuck:
                sim.set(target.device_id, target.table, target.address + i, int(word))

    sim.on_write.append(on_write)
    return lambda: sim.on_write.remove(on_write) if on_write in sim.on_write else None


def record_writes(sim: SimModbusDevices, at: ModbusAddress,
                  record: Callable[[str, object], None]) -> Callable[[], None]:
    """Tell *record* what an accepted write left at *at* (a coil or register has no travel: the
    value is both the output and the position). Returns the undo."""
    def on_write(device_id: int, table: str, address: int, count: int) -> None:
        if (device_id, table) != (at.device_id, at.table) or not address <= at.address < address + count:
            return
        words = [sim.value(at.device_id, at.table, at.address + i) for i in range(at.width)]
        value = decode(at, words)
        record("output", value)
        record("position", value)

    sim.on_write.append(on_write)
    return lambda: sim.on_write.remove(on_write) if on_write in sim.on_write else None
