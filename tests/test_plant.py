"""The simulated plant: linkages with delays, faults, and hands."""

from __future__ import annotations

import asyncio

import pytest

from drivers.gpio import GpioBus, GpioInputSpec, GpioOutputSpec
from drivers.sim.plant import Plant, UnknownFault


@pytest.fixture
async def rig():
    loop = asyncio.get_running_loop()
    plant = Plant(loop)
    plant.link("door", output_pin=17, energised=True, input_pin=27, level_when_on=True, delay_s=0.1,
               fault="jammed")
    bus = GpioBus(plant.gpio_factory)
    relay = bus.output("door.relay", GpioOutputSpec(17, active_high=True), safe=False)
    contact = bus.input("door.contact", GpioInputSpec(27, pull="up", active_high=None, debounce_s=None))
    for point in (relay, contact):
        point.bind(loop)
    await contact.refresh()
    await relay.refresh()
    yield plant, relay, contact
    bus.close()
    plant.stop()


async def test_world_starts_at_rest_despite_the_pull_up(rig) -> None:
    _plant, _relay, contact = rig
    # A closed reed holds the line low although the pull-up would raise it.
    assert contact.value is True


async def test_contact_follows_relay_after_the_delay(rig) -> None:
    _plant, relay, contact = rig
    opened = contact.expect(lambda v: v is False)
    await relay.write(True)
    assert contact.value is True  # not yet: the door takes time
    obs = await opened.wait(1.0)
    travel = obs.mono - relay.last.mono
    assert 0.09 <= travel < 0.5


async def test_jammed_contact_never_moves_until_cleared(rig) -> None:
    plant, relay, contact = rig
    plant.inject("door", "jammed")
    assert plant.active_faults("door") == ["jammed"]
    opened = contact.expect(lambda v: v is False)
    await relay.write(True)
    with pytest.raises(TimeoutError):
        await opened.wait(0.3)
    opened = contact.expect(lambda v: v is False)
    plant.clear("door")  # the world catches up with the energised relay
    await opened.wait(1.0)


async def test_hand_moves_the_world_without_the_relay(rig) -> None:
    plant, relay, contact = rig
    pushed = contact.expect(lambda v: v is False)
    plant.move_by_hand("door", True)
    await pushed.wait(1.0)
    assert relay.value is False


async def test_unknown_fault_names_the_supported_ones(rig) -> None:
    plant, _relay, _contact = rig
    with pytest.raises(UnknownFault, match="jammed"):
        plant.inject("door", "melted")
