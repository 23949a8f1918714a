"""The simulator's records stay bounded: a demo or soak running for days must not grow
(bench/soak.py found gpiozero's mock pins and the Modbus server keeping every change and request)."""

from __future__ import annotations

from drivers.sim.gpio_world import make_factory
from drivers.sim.modbus_world import SimModbusDevices
from drivers.sim.recent import LIMIT, Recent


def test_a_recent_list_drops_its_oldest_tenth_when_full() -> None:
    items: Recent[int] = Recent(limit=10)
    for i in range(25):
        items.append(i)
    assert len(items) <= 10 and items[-1] == 24 and items == sorted(items)
    assert items[1:] == list(items)[1:]  # still a list: tests slice and count it


def test_a_simulated_pin_keeps_a_bounded_record_of_its_changes() -> None:
    pin = make_factory().pin(17)
    pin.function = "output"
    for i in range(LIMIT + 500):
        pin.state = i % 2
    assert LIMIT * 0.85 <= len(pin.states) <= LIMIT
    assert pin.states[-1].state == (LIMIT + 499) % 2  # the newest change is the last one kept
    pin.clear_states()
    assert isinstance(pin.states, Recent) and len(pin.states) == 1


async def test_the_simulated_modbus_server_keeps_a_bounded_record_of_requests() -> None:
    sim = SimModbusDevices()
    sim.map(1, "coil", 0)
    for _ in range(LIMIT + 500):
        await sim.async_getValues(1, 1, 0, 1)
    assert LIMIT * 0.85 <= len(sim.seen) <= LIMIT and len(sim.reads(1)) == len(sim.seen)
