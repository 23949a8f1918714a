"""The daemon's lifecycle: build, start (safe outputs, read the truth), serve, stop safely."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import TYPE_CHECKING

from controller.devices import registry as kinds
from controller.devices.base import Device
from controller.devices.wiring import PointBus, Wiring
from controller.http.server import HttpServer
from controller.rpc.metrics import bus_counter_family
from controller.runtime.context import Context, build_context
from controller.security.auth import Session
from controller.service import configfile
from controller.service.reload import ReloadPlan, plan_reload
from controller.service.simulation import register_sim_methods, simulate, start_plant
from controller.settings.devices import DeviceConfig
from controller.settings.load import Config
from controller.settings.reader import ConfigError
from controller.settings.wamp import MissingExtra
from drivers.base import Bus
from drivers.gpio import GpioBus
from drivers.registry import LINK_DRIVERS
from drivers.sim.plant import Plant

if TYPE_CHECKING:  # imported at run time only when [mqtt] / [wamp] is configured (aiomqtt, autobahn)
    from controller.bridges.mqtt.bridge import MqttBridge
    from controller.bridges.wamp.bridge import WampBridge

log = logging.getLogger(__name__)


class Daemon:
    """One running pictl: its context (devices, events, metrics, audit, auth, dispatcher), the
    hardware or the plant (when simulated), the listener and the bridges."""

    def __init__(self, config: Config, *, simulate: bool = False, host: str | None = None,
                 port: int | None = None, time_scale: float = 1.0) -> None:
        self.config = config
        self.simulate = simulate
        self.time_scale = time_scale  # the simulated plant's clock: 0.1 runs its physics ten times faster
        self.host = host or config.server.host
        self.port = config.server.port if port is None else port
        self.ctx: Context | None = None  # built by start()
        self.plant: Plant | None = None
        self.gpio: GpioBus | None = None
        self.buses: list[Bus] = []  # every bus the devices use, in start order (the wiring's list)
        self.wiring: Wiring | None = None  # turns point specs into points; kept for reloads
        self.server: HttpServer | None = None
        self.mqtt: MqttBridge | None = None  # the MQTT bridge, only when [mqtt] is configured
        self.wamp: WampBridge | None = None  # the WAMP bridge, only when [wamp] is configured

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    @property
    def devices(self) -> dict[str, Device]:
        """The running devices (the context's live mapping; empty before start)."""
        return self.ctx.devices if self.ctx is not None else {}

    async def start(self) -> None:
        """Build the hardware side, read every point, then listen. Raises on any failure."""
        try:
            self.ctx = ctx = build_context(self.config)
            ctx.serve_devices()
            ctx.metrics.watch(lambda: [bus_counter_family(self.buses)])
            await self._build_hardware()
            if self.plant is not None:
                register_sim_methods(ctx.dispatcher, self.plant, ctx.devices, ctx.audit)
            self.server = HttpServer(ctx, host=self.host, port=self.port)
            await self.server.start()
            if self.config.mqtt is not None:
                from controller.bridges.mqtt.bridge import MqttBridge  # aiomqtt: only when configured

                self.mqtt = MqttBridge(ctx)
                await self.mqtt.start()
            if self.config.wamp is not None:
                self._start_wamp()
        except BaseException:
            await self.stop()
            raise
        for name, device in self.devices.items():
            state = device.state()
            log.info("device %s (%s): %s%s", name, device.kind, state.get("state", state),
                     "" if device.online else " (offline)")
        log.info("pictl serving %s%s", self.url, " on the simulated plant" if self.simulate else "")

    def _start_wamp(self) -> None:
        """Join the WAMP router in the background (autobahn only now: the optional extra)."""
        assert self.ctx is not None
        try:
            from controller.bridges.wamp.bridge import WampBridge
        except ImportError as exc:
            raise MissingExtra(f"[wamp] needs the wamp extra: pip install 'pictl[wamp]' ({exc})") from None
        self.wamp = WampBridge(self.ctx)
        self.wamp.start()

    async def _build_hardware(self) -> None:
        """Buses (real, or the plant's far side under --simulate), then devices, then read them all."""
        assert self.ctx is not None
        loop = asyncio.get_running_loop()
        config = self.config
        if self.simulate:
            # The plant's servers and terminals, and the config rewritten to reach them.
            self.plant, config = await start_plant(self.config, loop, time_scale=self.time_scale)
            self.gpio = GpioBus(self.plant.gpio_factory)
        else:
            self.gpio = GpioBus(factory_name=self.config.gpio_factory)  # loaded with the first GPIO line
        point_buses: dict[str, PointBus] = {self.gpio.key: self.gpio}
        for kind, driver in LINK_DRIVERS.items():
            for link in config.links(kind).values():
                bus = driver.open(link)
                point_buses[bus.key] = bus  # type: ignore[assignment]  # link buses make points from specs
        self.wiring = Wiring(point_buses)
        self.buses = self.wiring.buses
        built: list[Device] = []
        try:
            for device_config in config.devices.values():
                built.append(self._build_device(device_config))
            await self._start_buses(self.buses)
            for device in built:
                await device.start()
        except BaseException:
            for device in built:  # a start that failed half-way leaves no point claimed
                device.close()
            raise
        for device in built:  # offered once read: what they saw while starting is not news
            self.ctx.add_device(device)

    @staticmethod
    async def _start_buses(buses: list[Bus]) -> None:
        for bus in buses:
            await bus.start()  # Modbus: connect, safe values, first poll; serial: reader thread

    def _build_device(self, device_config: DeviceConfig) -> Device:
        """One device on the running buses, its points bound to the loop (not started yet)."""
        assert self.wiring is not None
        device = kinds.build(device_config, self.wiring)
        loop = asyncio.get_running_loop()
        for point in device.points:
            point.bind(loop)
        return device

    def drain_deadline(self) -> float:
        """Longest any accepted action can still take: its queue wait plus its confirmation."""
        longest = max((d.config.max_timeout for d in self.devices.values()), default=0.0)
        return 2 * longest + 1.0

    async def stop(self) -> None:
        """Stop accepting, let in-flight actions finish or fail, outputs to safe, close."""
        ctx = self.ctx
        if ctx is not None:
            ctx.dispatcher.draining = True
        if self.server is not None:
            self.server.stop_accepting()
            deadline = self.drain_deadline()
            drained = await asyncio.gather(self.server.drain(deadline),
                                           *([self.wamp.drain(deadline)] if self.wamp is not None else []))
            if not all(drained):
                log.warning("some actions did not finish before shutdown")
        if self.mqtt is not None:
            await self.mqtt.close(self.drain_deadline())
        if self.wamp is not None:
            await self.wamp.stop()
        for device in self.devices.values():
            try:
                device.close()
            except Exception:
                log.exception("closing %s failed", device.name)
        for bus in reversed(self.buses):
            try:
                await bus.stop()  # GPIO: safe levels for anything a device did not close
            except Exception:
                log.exception("closing bus %s failed", bus.name)
        self.buses.clear()
        if self.plant is not None:
            await self.plant.aclose()
        if self.server is not None:
            await self.server.close()
        if ctx is not None:
            await ctx.aclose()  # writes what the audit has queued: off the loop
        log.info("pictl stopped; outputs at their safe levels")

    # -- health, for the service manager ----------------------------------------------------
    def health_problem(self) -> str | None:
        """Why the daemon cannot do its job and needs a restart, or None.

        A device that is offline is not such a reason (a restart does not plug
        a cable back in); a bus whose own machinery is stuck is.
        """
        for bus in self.buses:
            reason = bus.wedged()
            if reason:
                return f"bus {bus.name}: {reason}"
        return None

    def status_line(self) -> str:
        """One line for ``systemctl status``: devices online, connections."""
        offline = [name for name, d in self.devices.items() if not d.online]
        connections = self.server.open_connections if self.server is not None else 0
        line = (f"{len(self.devices) - len(offline)}/{len(self.devices)} devices online, "
                f"{connections} connection{'' if connections == 1 else 's'}")
        return line + (f"; offline: {', '.join(offline)}" if offline else "")

    # -- reload -----------------------------------------------------------------------------
    async def reload(self) -> ReloadPlan | None:
        """Re-read the config file and apply it. An invalid file changes nothing: each problem
        is logged on its own line and None is returned."""
        try:  # off the loop: it reads secret files and parses a whole document
            new = await asyncio.to_thread(configfile.load, self.config.path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload refused, still running the previous config: %s", problem)
            return None
        return await self.apply(new)

    async def apply(self, new: Config) -> ReloadPlan:
        """Move the running daemon to *new*: unchanged devices are left alone (same objects,
        state and outputs); changed and removed ones are closed (outputs safe) after their
        action in progress; changed and added ones are built and read. Access rules apply to
        new logins at once; settings that need a restart are named in the log."""
        assert self.ctx is not None
        plan = plan_reload(self.config, new)
        overridden = (self.host, self.port) != (self.config.server.host, self.config.server.port)
        for item in plan.restart_needed:
            if overridden and item == "server.listen changed":
                log.info("server.listen changed in the config; --listen overrides it")
            else:
                log.warning("%s: restart pictl to apply it (systemctl restart pictl)", item)
        in_force = plan.in_force
        if plan.touches_devices:
            in_force = dataclasses.replace(in_force, devices=await self._apply_devices(plan, new))
        self.ctx.apply(in_force, access_changed=plan.access_changed)
        if plan.access_changed:
            await self._close_revoked_sessions(new)
        if self.wamp is not None and (plan.access_changed or plan.touches_devices):
            await self.wamp.refresh()  # register what the role may now call; withdraw the rest
        if self.server is not None:
            self.server.apply(in_force.server)
        self.config = in_force
        if self.mqtt is not None:
            self.mqtt.config_applied()
        log.info("config reloaded from %s: %s", new.path, plan.summary())
        return plan

    async def _close_own_buses(self, device: Device) -> None:
        """A bus that only this device used (a serial sensor's port) goes with it: thread, port and all."""
        for bus in [b for b in self.buses if b.owner == device.name]:
            self.buses.remove(bus)
            await bus.stop()

    async def _close_revoked_sessions(self, new: Config) -> None:
        """Connections authenticated with a token the new config removed, changed or re-roled must
        authenticate again: a revoked panel token stops working now, not at the next restart."""
        if self.server is None:
            return
        tokens = {t.name: t for t in new.tokens}

        def revoked(session: Session) -> bool:
            token = session.token
            return token is not None and (tokens.get(token.name) != token or new.roles.get(token.role) != session.role)

        closed = await self.server.close_sessions(revoked, 1008, "token revoked or changed: authenticate again")
        if closed:
            log.info("closed %d connection(s) whose token was revoked or changed", closed)

    async def _apply_devices(self, plan: ReloadPlan, new: Config) -> dict[str, DeviceConfig]:
        """Close, rebuild, drop and add devices; returns the device configs now in force."""
        assert self.ctx is not None
        in_force = dict(new.devices)
        going = [self.devices[name] for name in (*plan.changed, *plan.removed)]
        deadline = self.drain_deadline()
        finished = await asyncio.gather(*(device.retire(deadline) for device in going))
        for device, done in zip(going, finished, strict=True):
            if not done:
                log.warning("%s: its action did not finish before the reload closed it", device.name)
            await self._close_own_buses(device)
            if self.plant is not None:
                await self.plant.unlink(device.name)
        for name in plan.removed:
            self.ctx.remove_device(name)
        for name in (*plan.changed, *plan.added):
            old = self.config.devices.get(name)
            built = await self._bring_up(new.devices[name])
            if built is None and old is not None:
                log.error("%s: keeping its previous config", name)
                built = await self._bring_up(old)
                in_force[name] = old
            if built is None:
                log.error("%s: left out until the next reload or restart", name)
                self.ctx.remove_device(name)
                in_force.pop(name)
                continue
            self.ctx.add_device(built)
        self.ctx.order_devices(list(new.devices))
        return in_force

    async def _bring_up(self, device_config: DeviceConfig) -> Device | None:
        """Build and read one device; None (logged, nothing left claimed) when that fails."""
        if self.plant is not None:
            device_config = await simulate(self.plant, device_config)  # its far side, and the way to it
        device = None
        try:
            device = self._build_device(device_config)
            await self._start_buses(self.buses)  # new ports start; running links bring up the new points
            await device.start()
        except Exception as exc:
            log.error("%s: cannot build it: %s", device_config.name, exc)
            if device is not None:
                device.close()
            if self.plant is not None:
                await self.plant.unlink(device_config.name)
            return None
        state = device.state()
        log.info("device %s (%s): %s", device.name, device.kind, state.get("state", state))
        return device
