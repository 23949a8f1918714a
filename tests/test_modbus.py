"""The Modbus driver against a real pymodbus server on loopback (drivers/sim/modbus_world.py):
values and words, coalesced polling, read-back, exception replies, outage and recovery, TCP and RTU."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import pytest

from drivers.modbus import ExceptionReply, ModbusLink, decode, encode, plan_reads
from drivers.modbus_spec import ModbusAddress, ModbusLinkConfig, ModbusPointSpec
from drivers.sim.modbus_world import SimModbusServer
from tests.conftest import until, until_health


def addr(table: str, address: int, type: str = "bool", device_id: int = 1, scale: float = 1.0,
         offset: float = 0.0, word_order: str = "big") -> ModbusAddress:
    if table in ("holding", "input") and type == "bool":
        type = "uint16"
    return ModbusAddress(table=table, address=address, device_id=device_id, type=type, word_order=word_order,
                         scale=scale, offset=offset)


def spec(at: ModbusAddress, **kw) -> ModbusPointSpec:
    return ModbusPointSpec(link="plc", at=at, **kw)


# -- pure: values <-> registers ----------------------------------------------------------------
@pytest.mark.parametrize(("at", "value", "words"), [
    (addr("holding", 0, "int16"), -2, [0xFFFE]),
    (addr("holding", 0, "uint16"), 65535, [0xFFFF]),
    (addr("holding", 0, "int32"), -70000, [0xFFFE, 0xEE90]),
    (addr("holding", 0, "int32", word_order="little"), -70000, [0xEE90, 0xFFFE]),
    (addr("holding", 0, "uint32"), 70000, [0x0001, 0x1170]),
    (addr("holding", 0, "float32"), 21.5, [0x41AC, 0x0000]),
    (addr("holding", 0, "int16", scale=0.1), 40.0, [400]),
    (addr("holding", 0, "int16", scale=0.5, offset=-20.0), 0.0, [40]),
])
def test_encode_and_decode_are_inverse(at: ModbusAddress, value: float, words: list[int]) -> None:
    assert encode(at, value) == words
    assert decode(at, words) == pytest.approx(value)


@pytest.mark.parametrize(("at", "value"), [
    (addr("holding", 0, "uint16"), -1),
    (addr("holding", 0, "int16"), 40000),
    (addr("holding", 0, "uint16", scale=0.1), 6553.6),
    (addr("holding", 0, "float32"), 1e39),
    (addr("holding", 0, "uint16"), float("nan")),
])
def test_a_value_that_does_not_fit_the_register_is_refused(at: ModbusAddress, value: float) -> None:
    with pytest.raises(ValueError):
        encode(at, value)


def test_polling_plan_coalesces_adjacent_addresses_per_device_and_table() -> None:
    link = ModbusLink(link_config("tcp", 0))
    for name, at in [("a", addr("coil", 0)), ("b", addr("coil", 1)), ("c", addr("coil", 2)),
                     ("gap", addr("coil", 4)), ("other", addr("coil", 1, device_id=2)),
                     ("h32", addr("holding", 10, "int32")), ("h16", addr("holding", 12)),
                     ("di", addr("discrete", 0))]:
        link.input(name, spec(at))
    plan = {(g.device_id, g.table, g.start, g.count) for g in plan_reads(link.points)}
    assert plan == {(1, "coil", 0, 3), (1, "coil", 4, 1), (2, "coil", 1, 1), (1, "holding", 10, 3),
                    (1, "discrete", 0, 1)}


# -- against the simulated server --------------------------------------------------------------
TIMEOUT_S = 0.2  # each request's deadline (a reconnect must fit in it on a loaded machine); polls twice as often
def link_config(transport: str, port: int | str, **kw) -> ModbusLinkConfig:
    base = ModbusLinkConfig(name="plc", transport=transport, host="127.0.0.1" if transport == "tcp" else "",
                            port=port, baudrate=19200, bytesize=8, parity="E", stopbits=1, timeout=TIMEOUT_S,
                            poll_interval=TIMEOUT_S / 2, offline_after=2, backoff_max=2 * TIMEOUT_S)
    return replace(base, **kw)


@dataclass
class Rig:
    server: SimModbusServer
    link: ModbusLink


# A test that does not depend on the framing runs on TCP only (an RTU link's close costs 0.3 s:
# pyserial's socket:// handler sleeps in close()).
tcp_only = pytest.mark.parametrize("rig", ["tcp"], indirect=True)


@pytest.fixture(params=["tcp", "rtu"])
async def rig(request) -> AsyncIterator[Rig]:
    """A link to a simulated unit 1 with coils 0-2, discrete 0, holding 10-13, input 0; TCP or RTU."""
    server = SimModbusServer("plc", rtu=request.param == "rtu")
    await server.start()
    dev = server.devices
    dev.map(1, "coil", 0, 3)
    dev.map(1, "discrete", 0, 1)
    dev.map(1, "holding", 10, 4)
    dev.map(1, "input", 0, 1, value=215)
    port = server.url if request.param == "rtu" else server.port
    link = ModbusLink(link_config(request.param, port))
    yield Rig(server, link)
    await link.stop()
    await server.aclose()


async def start(rig: Rig) -> None:
    loop = asyncio.get_running_loop()
    for point in rig.link.points:
        point.bind(loop)
    await rig.link.start()


async def test_first_poll_reads_every_point_in_coalesced_requests(rig: Rig) -> None:
    coils = [rig.link.input(f"x.c{i}", spec(addr("coil", i))) for i in range(3)]
    temp = rig.link.input("x.t", spec(addr("input", 0, "int16", scale=0.1)))
    rig.server.devices.set(1, "coil", 1, 1)
    await start(rig)
    assert [c.value for c in coils] == [False, True, False] and temp.value == pytest.approx(21.5)
    before = len(rig.server.devices.reads())
    polled = coils[0].expect(lambda v: v is True)
    rig.server.devices.set(1, "coil", 0, 1)  # someone switches it at the device
    await polled.wait(2.0)
    # Each poll is one read per (device, table): three coils in one request, never one by one.
    new = [(r.table, r.address, r.count) for r in rig.server.devices.reads()[before:]]
    assert ("coil", 0, 3) in new and set(new) <= {("coil", 0, 3), ("input", 0, 1)}


async def test_write_is_read_back_from_the_device(rig: Rig) -> None:
    fan = rig.link.output("fan.output", spec(addr("coil", 0)), safe=False)
    await start(rig)
    obs = await fan.write(True)
    assert obs.value is True and rig.server.devices.value(1, "coil", 0) == 1
    assert fan.readback_source == "modbus-readback"
    assert fan.readback_evidence() == {"address": "coil 0 (device 1)", "raw": True}


async def test_a_verify_address_maps_to_on_and_off(rig: Rig) -> None:
    fan = rig.link.output("fan.output", spec(addr("coil", 0), verify=addr("holding", 11), verify_on=2.0,
                                             verify_off=0.0), safe=False)
    await start(rig)
    assert fan.value is False  # holding 11 reads 0: off
    rig.server.devices.set(1, "holding", 11, 2)
    assert (await fan.write(True)).value is True
    rig.server.devices.set(1, "holding", 11, 7)  # neither on nor off
    assert (await fan.write(True)).value is None and fan.last_raw == 7
    assert fan.readback_source == "modbus-verify"


async def test_exception_reply_is_an_error_but_not_an_outage(rig: Rig) -> None:
    ok = rig.link.input("x.ok", spec(addr("coil", 0)))
    missing = rig.link.input("x.missing", spec(addr("holding", 200)))  # not on the device
    await start(rig)
    assert ok.online and not missing.online
    assert "exception reply 2 (illegal data address)" in (missing.offline_reason or "")
    with pytest.raises(ExceptionReply, match="illegal data address"):
        await rig.link.write(addr("coil", 9), True)
    assert rig.link.counters()["exception_replies"] >= 2
    assert ok.online  # the device answered: it is there


async def test_silent_device_goes_offline_then_recovers_by_itself(rig: Rig) -> None:
    fan = rig.link.output("fan.output", spec(addr("coil", 0)), safe=False)
    await start(rig)
    assert fan.online
    rig.server.devices.silent.add(1)
    await until_health(fan, online=False)
    assert f"no reply within {TIMEOUT_S} s" in (fan.offline_reason or "")
    assert rig.link.counters()["timeouts"] >= 2
    rig.server.devices.silent.discard(1)
    await until_health(fan, online=True)
    assert (await fan.write(True)).value is True


@tcp_only
async def test_one_silent_unit_does_not_take_the_others_offline(rig: Rig) -> None:
    rig.server.devices.map(2, "coil", 0, 1)
    one = rig.link.input("one.x", spec(addr("coil", 0, device_id=1)))
    two = rig.link.input("two.x", spec(addr("coil", 0, device_id=2)))
    await start(rig)
    rig.server.devices.silent.add(2)
    await until_health(two, online=False)
    seen = one.expect(lambda v: v is True)
    rig.server.devices.set(1, "coil", 0, 1)
    await seen.wait(2.0)  # unit 1 is still polled
    assert one.online


async def test_server_down_at_start_then_up_reconnects() -> None:
    server = SimModbusServer("plc")
    await server.start()
    server.devices.map(1, "coil", 0, 1)
    port = server.port
    await server.aclose()  # nobody listens: connection refused
    link = ModbusLink(link_config("tcp", port))
    fan = link.output("fan.output", spec(addr("coil", 0)), safe=False)
    fan.bind(asyncio.get_running_loop())
    try:
        await link.start()
        assert not fan.online and "cannot connect" in (fan.offline_reason or "")
        await server.start()  # same port again
        await until_health(fan, online=True)
        assert link.counters()["reconnects"] == 0  # the first successful connect is not a reconnect
    finally:
        await link.stop()
        await server.aclose()


@tcp_only
async def test_outputs_are_written_safe_at_start_and_at_shutdown(rig: Rig) -> None:
    rig.server.devices.set(1, "coil", 0, 1)  # left on by someone
    fan = rig.link.output("fan.output", spec(addr("coil", 0)), safe=False)
    await start(rig)
    assert fan.value is False and rig.server.devices.value(1, "coil", 0) == 0
    await fan.write(True)
    await rig.link.stop()
    assert rig.server.devices.value(1, "coil", 0) == 0


@tcp_only
async def test_a_unit_silent_at_start_costs_only_offline_after_timeouts(rig: Rig) -> None:
    outputs = [rig.link.output(f"o{i}.output", spec(addr("coil", i)), safe=False) for i in range(3)]
    rig.server.devices.silent.add(1)
    await start(rig)
    assert not any(o.online for o in outputs)
    # Two safe writes time out and the unit is offline: the third write and the first poll are skipped.
    assert rig.link.counters()["timeouts"] == 2


@tcp_only
async def test_points_attached_and_detached_while_running_follow_the_polling_plan(rig: Rig) -> None:
    first = rig.link.input("a.x", spec(addr("coil", 0)))
    await rig.link.start()
    later = rig.link.output("b.out", spec(addr("coil", 1)), safe=False)
    assert [m.name for g in rig.link.groups for m in g.members] == ["a.x", "b.out"]  # one read for both
    rig.server.devices.set(1, "coil", 1, 1)
    await rig.link.start()  # on a running link: brings the new point up (safe value, first read)
    assert later.value is False and rig.server.devices.value(1, "coil", 1) == 0
    first.close()
    assert [m.name for g in rig.link.groups for m in g.members] == ["b.out"]
    rig.server.devices.set(1, "coil", 1, 1)
    await until(later.listen, lambda: later.value is True)  # still polled


@tcp_only
async def test_a_poll_loop_that_died_says_the_link_is_wedged(rig: Rig) -> None:
    rig.link.input("a.x", spec(addr("coil", 0)))
    await rig.link.start()
    assert rig.link.wedged() is None
    task = rig.link._task
    assert task is not None
    task.cancel()  # what an unexpected exception in the loop would leave behind
    await asyncio.wait({task}, timeout=2)
    assert rig.link.wedged() == "poll loop ended"
