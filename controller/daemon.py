"""The daemon's lifecycle: build, start (safe outputs, read the truth), serve, stop safely."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from typing import Any

from controller import kinds
from controller.audit import AuditTrail
from controller.auth import Authenticator
from controller.config import Config
from controller.devices import Device
from controller.dispatch import Dispatcher
from controller.events import EventBus
from controller.metrics import Metrics, auth_lockouts_family, bus_counter_family, device_online_family
from controller.server import Server
from controller.simulation import build_plant
from drivers.gpio import GpioBus, load_pin_factory
from drivers.sim.plant import Plant

log = logging.getLogger(__name__)


def tls_context(files: tuple[str, str] | None) -> ssl.SSLContext | None:
    """A server TLS context from (certificate, key) files, TLS 1.2 at least."""
    if files is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(*files)
    return context


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
        self.events = EventBus()  # replaced with the configured ones by start()
        self.metrics = Metrics()
        self.audit = AuditTrail(None)

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    async def start(self) -> None:
        """Build the hardware side, read every point, then listen. Raises on any failure."""
        try:
            self._open_live_state()
            await self._build_hardware()
            for device in self.devices.values():
                device.listen(self._device_event)
            self.dispatcher = Dispatcher(
                self.devices,
                Authenticator(self.config.tokens, self.config.roles, self.config.lockout),
                plant=self.plant,
                max_batch=self.config.server.max_batch,
                events=self.events,
                metrics=self.metrics,
                audit=self.audit,
                request_key_window=self.config.server.request_key_window,
            )
            self.server = Server(
                self.dispatcher, host=self.host, port=self.port,
                max_frame_bytes=self.config.server.max_frame_bytes,
                allowed_origins=self.config.server.allowed_origins,
                metrics_tokens=self.config.metrics.tokens,
                tls=tls_context(self.config.server.tls),
                auth_timeout=self.config.server.auth_timeout,
                max_connections=self.config.server.max_connections,
                max_connections_per_address=self.config.server.max_connections_per_address,
            )
            await self.server.start()
        except BaseException:
            await self.stop()
            raise
        for name, device in self.devices.items():
            log.info("device %s (%s): %s", name, device.kind, device.state()["state"])
        log.info("pictl serving %s%s", self.url, " on the simulated plant" if self.simulate else "")

    def _open_live_state(self) -> None:
        """The event bus, the metrics registry and the audit trail, before any device exists."""
        self.metrics = Metrics()
        self.events = EventBus(buffer_size=self.config.events.buffer,
                               max_pending_bytes=self.config.events.max_pending_bytes,
                               on_cutoff=self.metrics.event_cutoffs.inc)
        audit = self.config.audit
        self.audit = AuditTrail(audit.file, max_bytes=audit.max_bytes, backups=audit.backups, fsync=audit.fsync)
        self.metrics.watch(lambda: [device_online_family(self.devices), bus_counter_family(self.buses),
                                    *([auth_lockouts_family(self.dispatcher.auth)] if self.dispatcher else [])])

    def _device_event(self, device: Device, what: str, data: dict[str, Any]) -> None:
        """Every device event becomes a numbered event on the bus, and metrics."""
        if what == "status":
            self.events.publish("system.status", {"device": device.name, **data})
        elif what == "discrepancy":
            self.metrics.discrepancies.labels(device.name).inc()
            self.events.publish(f"{device.name}.discrepancy", data)
        else:
            if what == "state" and data.get("cause") == "external":
                self.metrics.external_changes.labels(device.name).inc()
            elif what == "reading":
                value = data.get("value")
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.metrics.sensor_value.labels(device.name).set(value)
            self.events.publish(f"{device.name}.{what}", data)
        self.metrics.events_published.inc()

    async def _build_hardware(self) -> None:
        """Buses (real, or the plant's far side under --simulate), then devices, then read them all."""
        loop = asyncio.get_running_loop()
        if self.simulate:
            self.plant = build_plant(self.config, loop)
            factory = self.plant.gpio_factory
        else:
            factory = load_pin_factory(self.config.gpio_factory)
        self.gpio = GpioBus(factory)
        self.buses.append(self.gpio)
        wiring = kinds.Wiring(self.gpio)
        for name, device_config in self.config.devices.items():
            device = kinds.build(device_config, wiring)
            for point in device.points:
                point.bind(loop)
            self.devices[name] = device
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
            self.plant.stop()
        if self.server is not None:
            await self.server.close()
        self.audit.close()
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
