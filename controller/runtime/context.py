"""The runtime context: what every front door serves from, built in one place.

A :class:`Context` holds the settings in force, the devices, the event bus, the metrics registry,
the audit trail, the authenticator and the dispatcher over them. :func:`build_context` is the one
factory: the node daemon and the fleet panel each build theirs from their config, and every front
door is a function of a context (``HttpServer(ctx, ...)``, ``MqttBridge(ctx)``,
``WampBridge(ctx)``), so whatever one listener honours, every listener honours: they are the same
code given a different context.

Devices enter through :meth:`Context.add_device`: their methods are registered, and every event
they emit becomes a numbered event (``<device>.<what>``) on the bus, seen by every front door, and
is counted.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from controller.devices.base import Device
from controller.rpc.actions import register_device
from controller.rpc.builtins import register_node_methods, register_session_methods
from controller.rpc.dispatch import Dispatcher
from controller.rpc.events import EventBus
from controller.rpc.metrics import Metrics, auth_lockouts_family, device_on_family, device_online_family
from controller.rpc.oncekeys import OnceKeys
from controller.security.audit import AuditTrail
from controller.security.auth import Authenticator
from controller.security.secrets import slow_tokens_warning
from controller.settings.load import Config

log = logging.getLogger(__name__)

OWN_EVENTS = frozenset({"state", "reading", "status", "discrepancy"})  # everything else is a kind's own event


@dataclasses.dataclass(eq=False)
class Context:
    """Settings, devices, events, metrics, audit and auth, and the dispatcher over them."""

    config: Config  # the settings in force (a reload replaces it through apply())
    metrics: Metrics  # this instance's Prometheus registry
    events: EventBus  # numbered live state
    audit: AuditTrail  # one entry per action call
    auth: Authenticator  # tokens, roles, lockouts
    dispatcher: Dispatcher  # the method table and its checks
    once: OnceKeys  # at-most-once action keys
    started: float = dataclasses.field(default_factory=time.monotonic)  # for uptime_s
    devices: dict[str, Device] = dataclasses.field(default_factory=dict)  # live: front doors read it as it changes
    _owned: dict[str, list[Callable[[], None]]] = dataclasses.field(default_factory=dict)  # device -> its undos

    # -- devices ----------------------------------------------------------------------------------
    def serve_devices(self) -> None:
        """Offer ``system.status`` and ``system.describe`` over this context's own devices (a node;
        the fleet offers its own view of the nodes' devices instead)."""
        register_node_methods(self.dispatcher, self.devices, self.events, self.started)

    def add_device(self, device: Device) -> None:
        """Offer *device* (replacing one of the same name) and publish what it emits.

        A replacement (a reload rebuilt the device) publishes its state at once, with cause
        ``reload``, to every front door: the rebuilt device starts from what its points read (its
        outputs at their safe level), which panels, MQTT and WAMP subscribers must not miss.
        """
        replaced = self.remove_device(device.name) is not None
        self.devices[device.name] = device
        self._owned[device.name] = [
            register_device(self.dispatcher, device, metrics=self.metrics, audit=self.audit, once=self.once),
            device.listen(self._device_event),
        ]
        if replaced:
            self._device_event(device, "state", {**device.state(), "cause": "reload"})

    def remove_device(self, name: str) -> Device | None:
        """Withdraw a device, its methods and its metric series; calls already running finish."""
        for undo in self._owned.pop(name, ()):
            undo()
        return self.devices.pop(name, None)

    def order_devices(self, names: list[str]) -> None:
        """Keep the config's order for status and describe (the mapping itself is shared)."""
        ordered = {name: self.devices[name] for name in (*names, *(n for n in self.devices if n not in names))
                   if name in self.devices}
        self.devices.clear()
        self.devices.update(ordered)

    def _device_event(self, device: Device, what: str, data: dict[str, Any]) -> None:
        """Every device event becomes a numbered event on the bus, and metrics."""
        if what == "status":
            self.events.publish("system.status", {"device": device.name, **data})
        else:
            if what == "discrepancy":
                self.metrics.discrepancies.labels(device.name).inc()
            elif what == "state" and data.get("cause") == "external":
                self.metrics.external_changes.labels(device.name).inc()
            elif what == "reading":
                self.metrics.reading(device.name, data)
            elif what not in OWN_EVENTS:
                self.metrics.device_event(device.name, what, data)
            self.events.publish(f"{device.name}.{what}", data)
        self.metrics.events_published.inc()

    # -- settings ---------------------------------------------------------------------------------
    def apply(self, config: Config, *, access_changed: bool) -> None:
        """A reloaded config: tokens and roles for new logins at once (lockout counts kept), limits."""
        if access_changed:
            self.auth.update(config.tokens, config.roles)
            self.warn_slow_tokens()
        self.dispatcher.max_batch = config.server.max_batch
        self.config = config

    def warn_slow_tokens(self) -> None:
        warning = slow_tokens_warning(self.auth.slow_tokens)
        if warning:
            log.warning("%s", warning)

    async def aclose(self) -> None:
        """Release what the context holds: the hashing thread, the audit file (written off the loop)."""
        self.auth.close()
        await self.audit.aclose()


def build_context(config: Config) -> Context:
    """The one factory: metrics, events, audit, auth and the dispatcher with the session methods."""
    metrics = Metrics()
    events = EventBus(buffer_size=config.events.buffer, max_pending_bytes=config.events.max_pending_bytes,
                      on_cutoff=metrics.event_cutoffs.inc)
    audit = AuditTrail(config.audit.file, max_bytes=config.audit.max_bytes, backups=config.audit.backups,
                       fsync=config.audit.fsync)
    auth = Authenticator(config.tokens, config.roles, config.lockout)
    dispatcher = Dispatcher(auth, metrics, max_batch=config.server.max_batch)
    ctx = Context(config=config, metrics=metrics, events=events, audit=audit, auth=auth, dispatcher=dispatcher,
                  once=OnceKeys(config.server.request_key_window))
    register_session_methods(dispatcher, auth, events, metrics)
    metrics.watch(lambda: [device_online_family(ctx.devices), device_on_family(ctx.devices),
                           auth_lockouts_family(auth)])
    ctx.warn_slow_tokens()
    return ctx
