"""What the door kinds' tests share: a daemon on a config of their own, the plant's record, events.

Every test configures its own short timings (travel_s 0.2 s, not the demo's 2 s) and its plant's
time scale, so the simulated physics and the controller's deadlines agree and the tests stay fast.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from controller.devices.base import Device
from controller.service import configfile as config
from controller.service.daemon import Daemon
from controller.wire.errors import RpcError
from tests.test_config import BASE

TOKEN = "long-enough-secret"  # the admin token of HEAD
HEAD = BASE[: BASE.index("[devices.")]  # tests/test_config.py's server and admin token, no devices


class Events:
    """Every device event of a daemon, in order, with a way to await the one a test expects."""

    def __init__(self, daemon: Daemon) -> None:
        self.seen: list[tuple[str, str, dict[str, Any]]] = []  # (device, what, data)
        self._changed = asyncio.Event()
        for device in daemon.devices.values():
            device.listen(self._on_event)

    def _on_event(self, device: Device, what: str, data: dict[str, Any]) -> None:
        self.seen.append((device.name, what, data))
        self._changed.set()

    async def wait_for(self, test: Callable[[str, str, dict[str, Any]], bool], timeout: float = 2.0,
                       start: int = 0) -> dict[str, Any]:
        """The data of the first event from index *start* on that passes *test*, awaited."""
        async with asyncio.timeout(timeout):
            while True:
                for device, what, data in self.seen[start:]:
                    if test(device, what, data):
                        return data
                self._changed.clear()
                await self._changed.wait()

    def of(self, device: str, what: str) -> list[dict[str, Any]]:
        return [data for d, w, data in self.seen if (d, w) == (device, what)]


@asynccontextmanager
async def running(devices: str, time_scale: float = 1.0) -> AsyncIterator[Daemon]:
    """A daemon on the simulated plant with HEAD and *devices* (TOML text), on a free port."""
    daemon = Daemon(config.loads(HEAD + devices, "test.toml"), simulate=True, host="127.0.0.1", port=0,
                    time_scale=time_scale)
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()


def device(daemon: Daemon, name: str) -> Any:
    return daemon.devices[name]


async def call(daemon: Daemon, name: str, action: str, **params: Any) -> dict[str, Any]:
    """The action as a client's call runs it (params checked, the device's queue), without a socket."""
    dev = device(daemon, name)
    timeout = dev.check_params(action, params)
    return await dev.run(action, params, timeout)  # type: ignore[no-any-return]


async def fails(daemon: Daemon, name: str, action: str, **params: Any) -> dict[str, Any]:
    """The error object of a call that must fail."""
    try:
        result = await call(daemon, name, action, **params)
    except RpcError as exc:
        return exc.to_wire()
    raise AssertionError(f"{name}.{action} did not fail: {result}")


async def interrupted(daemon: Daemon, events: Events, name: str, first: str, moving: str,
                      second: str) -> tuple[dict[str, Any], RpcError]:
    """Start *first*, and once the device's state says *moving*, call *second*: its result, and the
    error *first* ended with."""
    started = asyncio.create_task(call(daemon, name, first))
    await events.wait_for(lambda d, what, data: (d, what, data["state"]) == (name, "state", moving))
    result = await call(daemon, name, second)
    error = (await asyncio.gather(started, return_exceptions=True))[0]
    assert isinstance(error, RpcError), error
    return result, error


def record(daemon: Daemon, name: str, since: float) -> dict[str, list[tuple[float, Any]]]:
    """The plant's own record of the device's outputs and positions after *since*."""
    assert daemon.plant is not None
    return daemon.plant.history(name, since)


def outputs(daemon: Daemon, name: str, since: float) -> list[Any]:
    return [value for _, value in record(daemon, name, since)["outputs"]]


def now() -> float:
    return time.monotonic()
