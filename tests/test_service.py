"""``pictl serve`` as systemd runs it: a subprocess with NOTIFY_SOCKET and WATCHDOG_USEC set,
the manager's end of the socket held by the test; reload by SIGHUP."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import ADMIN, LIGHT_TIMEOUT_S, TEST_GPIO_TEXT, TIME_SCALE, Client, NotifySocket, edit, open_client
from tests.test_cli import PICTL

WATCHDOG_USEC = 400_000  # pings expected every 0.2 s


class Service:
    """A ``pictl serve`` child under a fake service manager."""

    def __init__(self, proc: asyncio.subprocess.Process, notify: NotifySocket, config_file: Path) -> None:
        self.proc = proc
        self.notify = notify  # the manager's end of NOTIFY_SOCKET
        self.config_file = config_file  # what SIGHUP re-reads
        self.log: list[str] = []
        self.url = ""
        self._reader: asyncio.Task[None] | None = None
        self._line = asyncio.Condition()

    async def _read_log(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            async with self._line:
                self.log.append(raw.decode())
                self._line.notify_all()

    def start_reading(self) -> None:
        self._reader = asyncio.get_running_loop().create_task(self._read_log())

    async def wait_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        async with asyncio.timeout(timeout), self._line:
            while True:
                for line in self.log:
                    match = re.search(pattern, line)
                    if match:
                        return match
                await self._line.wait()

    async def call(self, method: str, params: dict | None = None) -> dict:
        """One call on a link of its own (tests/test_cli.py runs `pictl call`; here it would cost a
        Python start per call)."""
        async with open_client(self.url, ADMIN) as ws:
            client = Client(ws)
            try:
                return await client.call(method, params)
            finally:
                await client.close()

    async def stop(self, sig: int | None = signal.SIGTERM) -> int:
        if sig is not None:
            self.proc.send_signal(sig)
        async with asyncio.timeout(15):
            code = await self.proc.wait()
            if self._reader is not None:
                await self._reader
        return code


@pytest.fixture
async def service(notify_socket: NotifySocket, tmp_path: Path) -> AsyncIterator[Service]:
    config_file = tmp_path / "pictl.toml"
    config_file.write_text(TEST_GPIO_TEXT)
    env = {**os.environ, "NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    proc = await asyncio.create_subprocess_exec(
        PICTL, "serve", "--config", str(config_file), "--simulate", "--time-scale", str(TIME_SCALE),
        "--listen", "127.0.0.1:0",
        stderr=asyncio.subprocess.PIPE, env=env,
    )
    svc = Service(proc, notify_socket, config_file)
    yield svc
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


async def test_ready_only_once_serving_then_watchdog_status_and_stopping(service: Service) -> None:
    ready = await service.notify.next("READY", timeout=20)
    # READY carries a status computed from the hardware already read...
    assert ready == {"READY": "1", "STATUS": "2/2 devices online, 0 connections"}
    service.start_reading()
    service.url = (await service.wait_log(r"serving (ws://\S+)")).group(1)
    # ...and the listener was open by then.
    assert (await service.call("system.ping")) == {"pong": True}
    # Pings keep coming, every WATCHDOG_USEC / 2.
    for _ in range(3):
        assert await service.notify.next("WATCHDOG", timeout=2) == {"WATCHDOG": "1"}
    async with open_client(service.url, ADMIN):
        assert (await service.notify.next("STATUS"))["STATUS"] == "2/2 devices online, 1 connection"
    assert (await service.notify.next("STATUS"))["STATUS"] == "2/2 devices online, 0 connections"
    await service.call("light.on")
    service.proc.send_signal(signal.SIGTERM)
    stopping = await service.notify.next("STOPPING")
    assert stopping["STOPPING"] == "1" and int(stopping["EXTEND_TIMEOUT_USEC"]) > 60_000_000
    assert await service.stop(None) == 0
    assert any("outputs at their safe levels" in line for line in service.log)
    # READY was sent exactly once, and before any watchdog ping.
    kinds = [next(iter(m)) for m in service.notify.seen if "READY" in m or "WATCHDOG" in m]
    assert kinds.count("READY") == 1 and kinds[0] == "READY"


async def test_sighup_reload_keeps_the_open_door_and_refuses_a_broken_file(service: Service) -> None:
    await service.notify.next("READY", timeout=20)
    service.start_reading()
    service.url = (await service.wait_log(r"serving (ws://\S+)")).group(1)
    config_file = service.config_file
    await service.call("door.open")
    await service.call("light.on")

    # A valid change: the light's timeout. The door is not touched; the light is rebuilt.
    config_file.write_text(edit(TEST_GPIO_TEXT, f"timeout = {LIGHT_TIMEOUT_S}", "timeout = 0.25"))
    service.proc.send_signal(signal.SIGHUP)
    assert (await service.notify.next("RELOADING"))["RELOADING"] == "1"
    ready = await service.notify.next("READY")
    assert ready["STATUS"] == "2/2 devices online, 0 connections"
    await service.wait_log(r"config reloaded from .*: 1 device\(s\) kept; rebuilt: light")
    assert (await service.call("door.state"))["state"] == "open"
    assert (await service.call("light.state"))["state"] == "off"

    # A broken file: refused, one line per problem, the daemon runs on as before.
    config_file.write_text("[devices.door]\nkind = 'portcullis'\n")
    service.proc.send_signal(signal.SIGHUP)
    await service.notify.next("RELOADING")
    ready = await service.notify.next("READY")
    assert ready["STATUS"].endswith("last reload refused (see the log)")
    await service.wait_log(rf"reload refused, still running the previous config: {config_file}:2: "
                           r"devices.door.kind: unknown device kind 'portcullis'")
    assert (await service.call("door.state"))["state"] == "open"
    assert (await service.call("system.describe"))["devices"]["light"]["timeout"] == 0.25
    assert await service.stop() == 0
    assert not any("Traceback" in line for line in service.log)


async def test_stop_lets_the_action_finish_and_a_second_signal_does_not_cut_it_short(service: Service) -> None:
    await service.notify.next("READY", timeout=20)
    service.start_reading()
    service.url = (await service.wait_log(r"serving (ws://\S+)")).group(1)
    await service.call("sim.fault", {"device": "door", "fault": "jammed"})
    async with open_client(service.url, ADMIN) as ws:
        client = Client(ws)
        opening = asyncio.create_task(client.request("door.open", {"timeout": 0.5}))
        while (await client.call("door.state"))["state"] != "moving":
            pass  # each round trip waits for the daemon; the open is in flight once it says moving
        service.proc.send_signal(signal.SIGTERM)
        await service.notify.next("STOPPING")
        # Draining now (the jammed door holds it for up to 0.5 s): an impatient second signal.
        service.proc.send_signal(signal.SIGINT)
        reply = await opening
        assert reply["error"]["code"] == -32002  # the action ran to its end: relay released
        assert "actuator released" in reply["error"]["data"]["recovery"]
        await client.close()
    assert await service.stop(None) == 0
    await service.wait_log("already shutting down; signal SIGINT ignored")
    assert any("outputs at their safe levels" in line for line in service.log)
