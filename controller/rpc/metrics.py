"""Prometheus metrics (README, *Metrics*), one registry per daemon instance.

Label values come only from the config (device and action names, the method
table) or from fixed vocabularies (error names); a method a client invents is
counted as ``unknown``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from controller.wire.errors import DROP_REASONS

prometheus_client.disable_created_metrics()  # no *_created series: noise for an embedded daemon

RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Why a handshake or request was refused: fixed vocabularies, all exported from the start.
WS_REFUSALS = ("origin", "unauthorized", "locked_out", "too_many_connections", "too_many_from_address",
               "bad_request", "misdirected", "handshake_timeout", "out_of_descriptors")
HTTP_REFUSALS = ("unauthorized", "locked_out", "bad_request", "misdirected")
# Confirmation times: five buckets per doubling (each bound 1.149x the last) from 3.9 ms to 64 s.
# histogram_quantile interpolates linearly inside a bucket, so its answer is off by at most half a
# bucket's width: under 7.5% anywhere on this ladder. With a coarse ladder a 0.3 s door whose
# observations all land in (0.3, 0.5] reads 0.4 s at p50; here it reads 0.29-0.32 s. One ladder for
# every device, so `sum by (le)` across devices works and a reload never changes the buckets.
CONFIRM_BUCKETS = tuple(float(f"{2 ** (k / 5):.4g}") for k in range(-40, 31))
# A sensor value's unit as configured -> the metric it is exported in (its quantity and base unit, as
# Prometheus names them) and the factor to that unit. A value in any other unit goes to
# pictl_sensor_reading{device, value, unit} as it is.
UNIT_METRICS = {
    "°C": ("pictl_sensor_temperature_celsius", 1.0),
    "V": ("pictl_sensor_voltage_volts", 1.0), "mV": ("pictl_sensor_voltage_volts", 1e-3),
    "kV": ("pictl_sensor_voltage_volts", 1e3),
    "A": ("pictl_sensor_current_amperes", 1.0), "mA": ("pictl_sensor_current_amperes", 1e-3),
    "W": ("pictl_sensor_power_watts", 1.0), "kW": ("pictl_sensor_power_watts", 1e3),
    "Wh": ("pictl_sensor_energy_joules", 3600.0), "kWh": ("pictl_sensor_energy_joules", 3.6e6),
    "MWh": ("pictl_sensor_energy_joules", 3.6e9),
    "Hz": ("pictl_sensor_frequency_hertz", 1.0),
    "Pa": ("pictl_sensor_pressure_pascals", 1.0), "hPa": ("pictl_sensor_pressure_pascals", 100.0),
    "kPa": ("pictl_sensor_pressure_pascals", 1e3), "bar": ("pictl_sensor_pressure_pascals", 1e5),
    "%": ("pictl_sensor_ratio", 0.01),
}
OTHER_UNITS = "pictl_sensor_reading"  # a value whose unit has no metric of its own
PRESSES = ("single", "double", "long")  # a button's gestures (the event <device>.press)
# What an action's failure is counted under (the error's name); each exists from the start.
FAILURE_REASONS = ("not_confirmed", "busy", "unavailable", "invalid_params")


class Metrics:
    """Every metric the daemon exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.rpc_requests = Counter("pictl_rpc_requests", "JSON-RPC requests by method and outcome",
                                    ["method", "outcome"], registry=r)
        self.rpc_dropped = Counter("pictl_rpc_dropped", "Requests dropped before they started: their caller "
                                   "had gone, or a newer command replaced them", ["reason"], registry=r)
        for reason in DROP_REASONS:
            self.rpc_dropped.labels(reason)
        self.rpc_duration = Histogram("pictl_rpc_duration_seconds", "Time to answer a JSON-RPC request",
                                      ["method"], buckets=RPC_BUCKETS, registry=r)
        self.action_confirm = Histogram("pictl_action_confirm_seconds",
                                        "Time from command to the observation that confirmed it",
                                        ["device", "action"], buckets=CONFIRM_BUCKETS, registry=r)
        self.action_failures = Counter("pictl_action_failures", "Actions that failed, by reason",
                                       ["device", "action", "reason"], registry=r)
        self.sensor_value = Gauge("pictl_sensor_value", "Last valid reading of a sensor", ["device"], registry=r)
        self.ws_connections = Gauge("pictl_ws_connections", "Open WebSocket connections", registry=r)
        self.events_published = Counter("pictl_events_published", "Events given a seq", registry=r)
        self.event_cutoffs = Counter("pictl_event_subscriber_cutoffs",
                                     "Subscribers disconnected because they fell too far behind", registry=r)
        self.discrepancies = Counter("pictl_discrepancies",
                                     "Feedback contradicting the commanded output, seen without a command",
                                     ["device"], registry=r)
        self.external_changes = Counter("pictl_external_changes", "State changes no call commanded",
                                        ["device"], registry=r)
        self.device_events = Counter("pictl_device_events", "A kind's own events (an alarm, a press), by name",
                                     ["device", "event"], registry=r)
        self.presses = Counter("pictl_input_presses", "A button's presses, by gesture", ["device", "press"],
                               registry=r)
        self.sensor_units: dict[str, Gauge] = {}  # metric name -> a sensor value gauge, made when first read
        self._sensor_series: dict[str, set[tuple[Gauge, tuple[str, ...]]]] = {}  # device -> its value series
        self.auth_failures = Counter("pictl_auth_failures", "Refused tokens (handshake, session.auth, /metrics)",
                                     registry=r)
        self.ws_refused = Counter("pictl_ws_refused", "WebSocket handshakes refused, by reason", ["reason"],
                                  registry=r)
        self.http_refused = Counter("pictl_http_refused", "Plain HTTP requests refused, by reason", ["reason"],
                                    registry=r)
        for reason in WS_REFUSALS:
            self.ws_refused.labels(reason)
        for reason in HTTP_REFUSALS:
            self.http_refused.labels(reason)
        ProcessCollector(registry=r)

    def device_added(self, device: str, actions: Iterable[str]) -> None:
        """Create a device's confirm and failure series at 0, so ``rate()`` sees its first event
        and a device that never failed still has a failures series."""
        for action in actions:
            self.action_confirm.labels(device, action)
            for reason in FAILURE_REASONS:
                self.action_failures.labels(device, action, reason)

    def device_removed(self, device: str, actions: Iterable[str]) -> None:
        """Drop a removed device's series (a reload), so they do not linger as stale zeros."""
        for action in actions:
            _forget(self.action_confirm, device, action)
            for reason in FAILURE_REASONS:
                _forget(self.action_failures, device, action, reason)
        _forget(self.sensor_value, device)
        for gauge, labels in self._sensor_series.pop(device, set()):
            _forget(gauge, *labels)
        for press in PRESSES:
            _forget(self.presses, device, press)

    def action_failed(self, device: str, action: str, reason: str) -> None:
        self.action_failures.labels(device, action, reason).inc()

    def reading(self, device: str, data: dict[str, Any]) -> None:
        """A sensor's valid reading (the event ``<device>.reading``): a single value in
        ``pictl_sensor_value{device}``, and every value in the metric of its unit: base units in the
        name (``pictl_sensor_energy_joules{device, value}`` for a meter's kWh, times 3.6e6), or
        ``pictl_sensor_reading{device, value, unit}`` for a unit without one. A single value has
        ``value=""`` (the same as no such label, to Prometheus)."""
        if "values" in data:
            units = data.get("units") or {}
            named = [(name, v, units.get(name, "")) for name, v in (data.get("values") or {}).items()]
        else:
            named = [("", data.get("value"), data.get("unit") or "")]
            if _is_number(data.get("value")):
                self.sensor_value.labels(device).set(data["value"])
        for name, value, unit in named:
            if not _is_number(value):
                continue
            metric, factor = UNIT_METRICS.get(unit, (OTHER_UNITS, 1.0))
            labels = (device, name) if metric != OTHER_UNITS else (device, name, unit)
            gauge = self._unit_gauge(metric)
            gauge.labels(*labels).set(value * factor)
            self._sensor_series.setdefault(device, set()).add((gauge, labels))

    def _unit_gauge(self, metric: str) -> Gauge:
        gauge = self.sensor_units.get(metric)
        if gauge is None:
            if metric == OTHER_UNITS:
                gauge = Gauge(metric, "A sensor value whose unit has no metric of its own, in that unit",
                              ["device", "value", "unit"], registry=self.registry)
            else:
                quantity = metric.removeprefix("pictl_sensor_").replace("_", " in ", 1).replace("_", " ")
                gauge = Gauge(metric, f"A sensor's {quantity} (the last valid reading)", ["device", "value"],
                              registry=self.registry)
            self.sensor_units[metric] = gauge
        return gauge

    def device_event(self, device: str, event: str, data: dict[str, Any] | None = None) -> None:
        """A kind's own event (``<device>.<event>``: an alarm, a press); a press by its gesture too."""
        self.device_events.labels(device, event).inc()
        press = (data or {}).get("press")
        if event == "press" and press in PRESSES:
            self.presses.labels(device, press).inc()

    def watch(self, collect: Callable[[], list[Any]]) -> None:
        """Register a scrape-time collector (device online flags, bus counters)."""
        self.registry.register(_Live(collect))

    def render(self, accept: str | None) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _forget(metric: Histogram | Counter | Gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):  # never created, or already gone
        metric.remove(*labels)


class _Live(Collector):
    def __init__(self, collect: Callable[[], list[Any]]) -> None:
        self._collect = collect

    def collect(self) -> list[Any]:
        return self._collect()

    def describe(self) -> list[Any]:
        return []  # names are dynamic enough; skip the registry's duplicate check


def device_online_family(devices: dict[str, Any]) -> GaugeMetricFamily:
    family = GaugeMetricFamily("pictl_device_online", "1 while the device answers, 0 when offline",
                               labels=["device"])
    for name, device in devices.items():
        family.add_metric([name], 1.0 if device.online else 0.0)
    return family


def device_on_family(devices: dict[str, Any]) -> GaugeMetricFamily:
    """Every device whose state is a plain on/off (an input, a switch): 1 while on, 0 while off."""
    family = GaugeMetricFamily("pictl_device_on", "1 while the device's observed state is on (an input pressed, "
                               "open or detecting; a switch's load on), 0 while off", labels=["device"])
    for name, device in devices.items():
        state = device.state().get("state")
        if state in ("on", "off"):
            family.add_metric([name], 1.0 if state == "on" else 0.0)
    return family


def auth_lockouts_family(auth: Any) -> CounterMetricFamily:
    family = CounterMetricFamily("pictl_auth_lockouts", "Client addresses locked out after repeated failures")
    family.add_metric([], float(auth.lockouts))
    return family


def bus_counter_family(buses: list[Any]) -> CounterMetricFamily:
    family = CounterMetricFamily("pictl_bus_events", "Bus events: reconnects, reopens, failed requests, "
                                 "malformed lines...", labels=["bus", "event"])
    for bus in buses:
        for event, count in sorted(bus.counters().items()):
            family.add_metric([bus.name, event], float(count))
    return family
