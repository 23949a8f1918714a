"""Describe a configuration's physics to the simulated plant (``--simulate``).

Knows what each device kind does in the world: a door's contact follows its
relay after about 0.3 s; a switch's feedback follows its output after about
0.05 s. A switch without feedback needs no physics: its output is read back.
"""

from __future__ import annotations

import asyncio

from controller.config import Config, DeviceConfig
from controller.door import DoorConfig
from controller.switch import SwitchConfig
from drivers.sim.plant import Plant

DOOR_TRAVEL_S = 0.3  # time from relay change to contact change
LAMP_FEEDBACK_S = 0.05  # time from output change to feedback change


def build_plant(config: Config, loop: asyncio.AbstractEventLoop) -> Plant:
    """A plant wired as *config* says, everything initially at rest (doors closed, loads off)."""
    plant = Plant(loop)
    for device in config.devices.values():
        simulate(plant, device)
    return plant


def simulate(plant: Plant, device: DeviceConfig) -> None:
    """Add one device's physics to *plant* (at rest); kinds without physics add nothing."""
    if isinstance(device, DoorConfig):
        open_level = device.contact.active_level if device.open_when_active else not device.contact.active_level
        plant.link(device.name, output_pin=device.relay.pin, energised=device.relay.active_high,
                   input_pin=device.contact.pin, level_when_on=open_level, delay_s=DOOR_TRAVEL_S,
                   fault="jammed")
    elif isinstance(device, SwitchConfig) and device.feedback is not None:
        on_level = device.feedback.active_level if device.on_when_active else not device.feedback.active_level
        plant.link(device.name, output_pin=device.output.pin, energised=device.output.active_high,
                   input_pin=device.feedback.pin, level_when_on=on_level, delay_s=LAMP_FEEDBACK_S,
                   fault="no_feedback")
