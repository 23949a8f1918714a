"""The daemon's lifecycle: build, start (safe outputs, read the truth), serve, stop safely."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from controller import kinds
from controller.auth import Authenticator
from controller.config import Config
from controller.devices import Device
from controller.dispatch import Dispatcher
from controller.server import Server
from controller.simulation import start_plant
from drivers.gpio import GpioBus, load_pin_factory
from drivers.modbus import ModbusLink
from drivers.sim.plant import Plant

log = logging.getLogger(__name__)


class Daemon:
    """One running pictl: devices, the plant (when simulated), the listener."""

    def __init__(self, config: Config, *, simulate: bool = False, host: str | None = None,
                 port: int | None = None) -> None:
        self.config = config
        self.simulate = simulate
        self.host = host or config.server.host
        self.port = config.server.port if port is None else port
        self.plant: Plant | None = None
        self.gpio: GpioBus | None = None
        # Every bus the devices use: each has name, kind, counters() -> dict[str, int], aclose().
        self.buses: list[Any] = []
        self.devices: dict[str, Device] = {}
        self.dispatcher: Dispatcher | None = None
        self.server: Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    async def start(self) -> None:
        """Build the hardware side, read every point, then listen. Raises on any failure."""
        try:
            await self._build_hardware()
            self.dispatcher = Dispatcher(
                self.devices,
                Authenticator(self.config.tokens, self.config.roles),
                plant=self.plant,
                max_batch=self.config.server.max_batch,
            )
            self.server = Server(
                self.dispatcher, host=self.host, port=self.port,
                max_frame_bytes=self.config.server.max_frame_bytes,
                allowed_origins=self.config.server.allowed_origins,
            )
            await self.server.start()
        except BaseException:
            await self.stop()
            raise
        for name, device in self.devices.items():
            state = device.state()
            log.info("device %s (%s): %s%s", name, device.kind, state.get("state", state),
                     "" if device.online else " (offline)")
        log.info("pictl serving %s%s", self.url, " on the simulated plant" if self.simulate else "")

    async def _build_hardware(self) -> None:
        """Buses (real, or the plant's far side under --simulate), then devices, then read them all."""
        loop = asyncio.get_running_loop()
        config = self.config
        if self.simulate:
            # The plant's servers and terminals, and the config rewritten to reach them.
            self.plant, config = await start_plant(self.config, loop)
            factory = self.plant.gpio_factory
        else:
            factory = load_pin_factory(self.config.gpio_factory)
        self.gpio = GpioBus(factory)
        self.buses.append(self.gpio)
        links = {name: ModbusLink(link) for name, link in config.modbus.items()}
        self.buses.extend(links.values())
        wiring = kinds.Wiring(self.gpio, links, self.buses)
        for name, device_config in config.devices.items():
            device = kinds.build(device_config, wiring)
            for point in device.points:
                point.bind(loop)
            self.devices[name] = device
        for bus in self.buses:
            start = getattr(bus, "start", None)
            if start is not None:
                await start()  # Modbus: connect, safe values, first poll; serial: reader thread
        for device in self.devices.values():
            await device.start()

    def drain_deadline(self) -> float:
        """Longest any accepted action can still take: its queue wait plus its confirmation."""
        longest = max((d.config.max_timeout for d in self.devices.values()), default=0.0)
        return 2 * longest + 1.0

    async def stop(self) -> None:
        """Stop accepting, let in-flight actions finish or fail, outputs to safe, close."""
        if self.server is not None and self.dispatcher is not None:
            self.server.stop_accepting()
            self.dispatcher.draining = True
            if not await self.server.drain(self.drain_deadline()):
                log.warning("some actions did not finish before shutdown")
        for device in self.devices.values():
            try:
                device.close()
            except Exception:
                log.exception("closing %s failed", device.name)
        for bus in reversed(self.buses):
            try:
                await bus.aclose()  # GPIO: safe levels for anything a device did not close
            except Exception:
                log.exception("closing bus %s failed", bus.name)
        self.buses.clear()
        if self.plant is not None:
            await self.plant.aclose()
        if self.server is not None:
            await self.server.close()
        log.info("pictl stopped; outputs at their safe levels")


async def serve_until_signalled(daemon: Daemon) -> None:
    """Run *daemon* until SIGTERM or SIGINT, then stop it cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await daemon.start()
    try:
        await stop.wait()
        log.info("signal received: shutting down")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await daemon.stop()
