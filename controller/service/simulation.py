"""Put the simulated plant at the far side of a configuration's buses (``--simulate``).

Generic over kinds and buses: each device config lists its point specs and the
couplings of its kind (a door's contact follows its relay after about 0.3 s),
and the far side registered for each bus (:data:`drivers.sim.farsides.FAR_SIDES`)
does the rest: a real pymodbus server per Modbus link, a pseudo-terminal per
serial sensor, mock pins linked through delays for GPIO. The drivers are
pointed at them by a rewritten config (host/port of each link, port of each
sensor): driver code never knows it is simulated.

The plant's controls (``sim.fault``, ``sim.clear``, ``sim.timeline``, ``sim.input``) are
registered here too, with the dispatcher, only when the daemon runs simulated.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from controller.devices.base import Device
from controller.rpc.dispatch import Dispatcher
from controller.security.audit import AuditTrail
from controller.security.auth import Session
from controller.settings.devices import DeviceConfig
from controller.settings.load import Config
from controller.wire.errors import InvalidParams, refuse_unknown_params
from drivers.base import Mechanism, PointSpec
from drivers.sim.farsides import FAR_SIDES
from drivers.sim.plant import Plant, UnknownFault

log = logging.getLogger(__name__)

MAX_BOUNCES = 20  # a contact that chatters more than this is broken, not bouncing


async def simulate(plant: Plant, device: DeviceConfig) -> DeviceConfig:
    """Give *device* its far side (points, faults, physics); returns its config pointed at it."""
    specs = device.specs()
    rewritten = {field: await FAR_SIDES[spec.bus_kind].claim(plant, device.name, spec)
                 for field, spec in specs.items()}
    for coupling in device.couplings():
        if isinstance(coupling, Mechanism):
            machine(plant, device.name, specs, coupling)
            continue
        output, input = specs[coupling.output], specs[coupling.input]
        coupled = output.bus_kind == input.bus_kind \
            and FAR_SIDES[output.bus_kind].couple(plant, device.name, output, input, coupling)
        if not coupled:
            log.info("%s: no simulated physics from %s to %s (different buses)", device.name, coupling.output,
                     coupling.input)
    changed = {field: spec for field, spec in rewritten.items() if spec is not specs[field]}
    return dataclasses.replace(device, **changed) if changed else device  # type: ignore[arg-type]  # spec fields


def machine(plant: Plant, device: str, specs: dict[str, PointSpec], mechanism: Mechanism) -> None:
    """The machine *mechanism* describes at the far side of its points' bus (they must share one)."""
    wired = {role: specs[field] for role, field in mechanism.points}
    buses = {spec.bus_kind for spec in wired.values()}
    far = FAR_SIDES[buses.pop()] if len(buses) == 1 else None
    build = getattr(far, "machine", None)
    if build is None or not build(plant, device, wired, mechanism):
        log.info("%s: no simulated %s for these points (several buses, or one without machines)", device,
                 mechanism.model)


async def start_plant(config: Config, loop: asyncio.AbstractEventLoop, *,
                      time_scale: float = 1.0) -> tuple[Plant, Config]:
    """The whole plant, started and at rest (doors closed, loads off), and *config* rewritten
    to reach it. *time_scale* multiplies every simulated duration (tests run the plant faster)."""
    plant = Plant(loop, time_scale=time_scale)
    try:
        links = {kind: await far.open_links(plant, dict(config.links(kind))) for kind, far in FAR_SIDES.items()}
        devices = {name: await simulate(plant, device) for name, device in config.devices.items()}
    except BaseException:
        await plant.aclose()
        raise
    return plant, config.with_links(links, devices)


def register_sim_methods(dispatcher: Dispatcher, plant: Plant, devices: Mapping[str, Device],
                         audit: AuditTrail) -> list[Callable[[], None]]:
    """``sim.fault``, ``sim.clear``, ``sim.timeline`` and ``sim.input``: the plant's controls, admin
    only, offered only under ``--simulate`` (README, *Methods*)."""

    def device_param(params: dict[str, Any]) -> str:
        device = params.get("device")
        if not isinstance(device, str) or device not in devices:
            raise InvalidParams("device must name a configured device", param="device")
        return device

    def fault(session: Session, params: dict[str, Any]) -> Any:
        refuse_unknown_params("sim.fault", params, ("device", "fault"))
        device = device_param(params)
        name = params.get("fault")
        if not isinstance(name, str):
            raise InvalidParams("fault must be a string", param="fault", faults=plant.faults(device))
        try:
            plant.inject(device, name)
        except UnknownFault as exc:
            raise InvalidParams(str(exc), param="fault", faults=plant.faults(device)) from None
        audit.record(session, "sim.fault", params, "ok", time.monotonic())
        return {"device": device, "faults": plant.active_faults(device)}

    def clear(session: Session, params: dict[str, Any]) -> Any:
        refuse_unknown_params("sim.clear", params, ("device",))
        device = device_param(params)
        try:
            plant.clear(device)
        except UnknownFault as exc:
            raise InvalidParams(str(exc), param="device") from None
        audit.record(session, "sim.clear", params, "ok", time.monotonic())
        return {"device": device, "faults": plant.active_faults(device)}

    def timeline(session: Session, params: dict[str, Any]) -> Any:
        """When the simulated device physically moved (monotonic clock): for benchmarks and tests.
        With ``since`` (monotonic seconds), also the plant's record of every output and position
        change after it (bench/soak.py checks results and the audit trail against it)."""
        refuse_unknown_params("sim.timeline", params, ("device", "since"))
        device = device_param(params)
        since = params.get("since")
        if since is not None:
            if isinstance(since, bool) or not isinstance(since, (int, float)):
                raise InvalidParams("since must be a number (monotonic seconds)", param="since")
            return {"device": device, **plant.history(device, float(since))}
        try:
            return {"device": device, "moved_at": plant.timeline(device)}
        except UnknownFault as exc:
            raise InvalidParams(str(exc), param="device") from None

    def input_level(session: Session, params: dict[str, Any]) -> Any:
        """Set the far side of an input device's line, as a finger on a button would (the device's
        debounce applies as on a real pin); ``bounces`` makes the contact chatter first."""
        refuse_unknown_params("sim.input", params, ("device", "active", "bounces"))
        device = device_param(params)
        active, bounces = params.get("active"), params.get("bounces", 0)
        if not isinstance(active, bool):
            raise InvalidParams("active must be true or false", param="active")
        if isinstance(bounces, bool) or not isinstance(bounces, int) or not 0 <= bounces <= MAX_BOUNCES:
            raise InvalidParams(f"bounces must be an integer from 0 to {MAX_BOUNCES}", param="bounces")
        try:
            plant.set_input(device, active, bounces)
        except UnknownFault as exc:
            raise InvalidParams(str(exc), param="device") from None
        audit.record(session, "sim.input", params, "ok", time.monotonic())
        return {"device": device, "active": active}

    return [dispatcher.register(f"sim.{name}", handler, instant=True, admin_only=True)
            for name, handler in (("fault", fault), ("clear", clear), ("timeline", timeline),
                                  ("input", input_level))]
