"""A device's methods: ``<device>.state`` and one per action, registered with the dispatcher.

An action call validates its params with the device, takes its at-most-once key, runs through the
device's queue and confirmation, and is counted (``pictl_action_confirm_seconds``,
``pictl_action_failures_total``) and audited whatever its outcome.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from controller.devices.base import Device
from controller.rpc.dispatch import Dispatcher, Handler
from controller.rpc.metrics import Metrics
from controller.rpc.oncekeys import OnceKeys, check_key
from controller.security.audit import AuditTrail
from controller.security.auth import Session
from controller.wire.errors import Busy, Dropped, RpcError, refuse_unknown_params

# One running and one waiting, per connection and device: the queue absorbs overlap (a second tap
# while the first still moves), not a script. A flood of commands from one client is refused busy at
# once instead of switching a relay for minutes.
MAX_QUEUED_PER_DEVICE = 2


def register_device(dispatcher: Dispatcher, device: Device, *, metrics: Metrics, audit: AuditTrail,
                    once: OnceKeys) -> Callable[[], None]:
    """Offer *device*'s methods; returns the function that withdraws them (and its metric series)."""

    def state(session: Session, params: dict[str, Any]) -> Any:
        refuse_unknown_params(f"{device.name}.state", params)
        return device.state()

    withdraws = [dispatcher.register(f"{device.name}.state", state, instant=True)]
    for action in device.actions:
        withdraws.append(dispatcher.register(f"{device.name}.{action}",
                                             _action_handler(device, action, metrics, audit, once)))
    metrics.device_added(device.name, device.actions)

    def withdraw() -> None:
        for undo in withdraws:
            undo()
        metrics.device_removed(device.name, device.actions)

    return withdraw


def _action_handler(device: Device, action: str, metrics: Metrics, audit: AuditTrail, once: OnceKeys) -> Handler:
    method = f"{device.name}.{action}"

    async def run(session: Session, params: dict[str, Any]) -> Any:
        started = time.monotonic()
        replayed = False

        def wanted() -> bool:  # asked when the device's queue is ours: a gone caller's action never starts
            return not session.gone

        try:
            action_params = {k: v for k, v in params.items() if k != "request_key"}
            timeout = device.check_params(action, action_params)
            key = check_key(params["request_key"]) if "request_key" in params else None
            device.check_online()
            with _one_more(session, device.name, capped=not device.actions[action].interrupts):
                if key is None:
                    outcome = await device.run(action, action_params, timeout, wanted)
                else:
                    assert session.token is not None
                    outcome, replayed = await once.run(session.token.name, key, method, action_params,
                                                       lambda: device.run(action, action_params, timeout, wanted))
        except RpcError as err:
            metrics.action_failed(device.name, action, err.name)
            await audit.write(session, method, params, err.name, started, error=err.to_wire())
            raise
        except Dropped:
            audit.record(session, method, params, "dropped", started)
            raise
        if replayed:
            outcome = {**outcome, "replayed": True}
        elif outcome.get("changed"):  # an actuation (a sensor read has no confirmation time)
            metrics.action_confirm.labels(device.name, action).observe(outcome["elapsed_ms"] / 1000)
        await audit.write(session, method, params, "ok", started, result=outcome)
        return outcome

    return run


@contextlib.contextmanager
def _one_more(session: Session, device: str, capped: bool) -> Iterator[None]:
    """Count one more action of *session* on *device* while it waits and runs; -32003 past the cap
    (unless it is not *capped*: an interrupting action such as ``stop`` never waits, so never queues)."""
    queued = session.queued.get(device, 0)
    if capped and queued >= MAX_QUEUED_PER_DEVICE:
        raise Busy(f"{device} already has {queued} actions of this connection running or waiting: wait for "
                   "their answers", device=device)
    session.queued[device] = queued + 1
    try:
        yield
    finally:
        left = session.queued[device] - 1
        if left:
            session.queued[device] = left
        else:
            del session.queued[device]
