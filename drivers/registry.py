"""The buses pictl knows, by the key that selects them: one line per bus.

A point in the config names its driver by a key (``{ gpio = 17 }``,
``{ modbus = "plc", coil = 3 }``); a bus shared by several devices has its own
config sections (``[modbus.plc]``). A new bus is a driver module with its spec,
its parser and its :class:`drivers.base.Bus`, a far side in ``drivers/sim/``,
and a line here and in :data:`drivers.sim.farsides.FAR_SIDES`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from drivers import gpio, modbus, modbus_spec
from drivers.base import Bus, PointSpec, SpecTable


@dataclass
class SpecContext:
    """What point readers share while one config is read."""

    pins: gpio.PinClaims = field(default_factory=gpio.PinClaims)  # GPIO lines claimed so far
    links: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # bus kind -> link name -> link config


@dataclass(frozen=True)
class PointDriver:
    """How a point table naming this driver's key becomes a spec."""

    hint: str  # how a point names it, for error messages: 'gpio = PIN'
    read_output: Callable[[SpecTable, SpecContext], PointSpec | None]
    read_input: Callable[[SpecTable, SpecContext], PointSpec | None]


@dataclass(frozen=True)
class LinkDriver:
    """A bus shared by devices, configured in its own ``[KIND.NAME]`` sections."""

    read: Callable[[str, SpecTable], Any]  # one section -> its link config, or None after a problem
    open: Callable[[Any], Bus]  # a link config -> its bus (not started)


POINT_DRIVERS: dict[str, PointDriver] = {
    "gpio": PointDriver("gpio = PIN", lambda t, ctx: gpio.read_output(t, ctx.pins),
                        lambda t, ctx: gpio.read_input(t, ctx.pins)),
    "modbus": PointDriver('modbus = "LINK"',
                          lambda t, ctx: modbus_spec.read_point(t, ctx.links.get("modbus", {}), writable=True),
                          lambda t, ctx: modbus_spec.read_point(t, ctx.links.get("modbus", {}), writable=False)),
}

LINK_DRIVERS: dict[str, LinkDriver] = {
    "modbus": LinkDriver(modbus_spec.read_link, modbus.ModbusLink),
}
