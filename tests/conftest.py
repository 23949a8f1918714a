"""Fixtures: a daemon on the demo plant over a real WebSocket, and a small JSON-RPC client."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from controller.devices.base import Device
from controller.service import configfile as config
from controller.service.daemon import Daemon
from controller.settings.load import Config
from drivers.base import Point

# CI runs the fuzz suite on a fixed set of examples (the same every run); developers get fresh ones.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "config" / "demo.toml"
# The demo's GPIO half (door and light): for tests that count events, devices or status lines,
# which the sensor's steady readings and the Modbus fan would make depend on timing.
DEMO_GPIO_TEXT = DEMO.read_text().split("\n# A Modbus TCP link")[0] + "\n"
ADMIN = "demo-admin"
PANEL = "demo-panel"


@pytest.fixture
def demo_config() -> Config:
    return config.load(str(DEMO))


def gpio_demo() -> Config:
    """The demo's GPIO half as a config (see DEMO_GPIO_TEXT)."""
    return config.loads(DEMO_GPIO_TEXT, str(DEMO))


def on_gpio_demo() -> Any:
    """``demo_config = on_gpio_demo()`` in a test module runs its daemons on the demo's GPIO half:
    for tests that count events, tiles or status lines, which the sensor's steady readings and
    two more devices would change (tests/test_e2e_fan_sensor.py covers those devices)."""

    @pytest.fixture(name="demo_config")
    def gpio_demo_config() -> Config:
        return gpio_demo()

    return gpio_demo_config


@pytest.fixture
async def daemon(demo_config: Config) -> AsyncIterator[Daemon]:
    d = Daemon(demo_config, simulate=True, host="127.0.0.1", port=0)
    await d.start()
    try:
        yield d
    finally:
        await d.stop()


class Client:
    """A JSON-RPC client that matches replies to requests by id, so calls can overlap."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self.other: asyncio.Queue[Any] = asyncio.Queue()  # frames that are not replies to call()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                msg = json.loads(frame)
                if isinstance(msg, dict) and msg.get("id") in self._pending:
                    self._pending.pop(msg["id"]).set_result(msg)
                else:
                    await self.other.put(msg)
        except ConnectionClosed:
            pass  # the test awaiting a reply times out and says so

    async def request(self, method: str, params: Any = None, timeout: float = 10.0) -> dict[str, Any]:
        """The whole reply object (result or error)."""
        request_id = next(self._ids)
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            msg["params"] = params
        future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        await self.ws.send(json.dumps(msg))
        async with asyncio.timeout(timeout):
            return await future

    async def call(self, method: str, params: Any = None, timeout: float = 10.0) -> Any:
        """The result; fails the test on an error reply."""
        reply = await self.request(method, params, timeout)
        assert "result" in reply, reply
        return reply["result"]

    async def error(self, method: str, params: Any = None, timeout: float = 10.0) -> dict[str, Any]:
        """The error object; fails the test on a result."""
        reply = await self.request(method, params, timeout)
        assert "error" in reply, reply
        return reply["error"]

    async def raw(self, text: str | bytes, timeout: float = 10.0) -> Any:
        """Send a frame as is and return the next frame that is not a call() reply."""
        await self.ws.send(text)
        async with asyncio.timeout(timeout):
            return await self.other.get()

    async def close(self) -> None:
        self._reader.cancel()
        await self.ws.close()


async def http_get(daemon: Daemon, path: str,
                   headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """A plain HTTP GET to the daemon's listener: status, lower-cased headers, body."""
    assert daemon.server is not None
    extra = [("Host", "127.0.0.1"), ("Connection", "close"), *(headers or {}).items()]
    status, fields, body = await raw_http(daemon.server.port, path, extra)
    assert status is not None, "the daemon closed the connection without an answer"
    return status, fields, body


async def raw_http(port: int, path: str, headers: list[tuple[str, str]] | bytes,
                   local_addr: tuple[str, int] | None = None,
                   timeout: float = 10.0) -> tuple[int | None, dict[str, str], bytes]:
    """``GET path`` with exactly these header lines (repeats, odd casing, any bytes: *headers* may be the
    raw header block), and the answer: status (None when the server closed without one), lower-cased
    headers, body. The connection is closed after the answer head, even on a 101."""
    block = headers if isinstance(headers, bytes) else "".join(f"{k}: {v}\r\n" for k, v in headers).encode("latin-1")
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=local_addr)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\n".encode() + block + b"\r\n")
        async with asyncio.timeout(timeout):
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                head += chunk
            head, _, body = head.partition(b"\r\n\r\n")
            if not head:
                return None, {}, b""
            lines = head.decode("latin-1").split("\r\n")
            fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            status = int(lines[0].split()[1])
            length = int(fields.get("content-length", "0") or 0)
            while status != 101 and len(body) < length:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                body += chunk
    finally:
        writer.close()
    return status, fields, body


def open_client(url: str, token: str | None = ADMIN, additional_headers: dict[str, str] | None = None,
                **kwargs: Any) -> Any:
    headers = {**({"Authorization": f"Bearer {token}"} if token else {}), **(additional_headers or {})}
    return connect(url, additional_headers=headers or None, compression=None, **kwargs)


async def close_all(daemon: Daemon, code: int = 1012, reason: str = "service restart") -> None:
    """Close every open WebSocket of *daemon*, as a restarting proxy would: clients must reconnect."""
    assert daemon.server is not None and daemon.server._ws is not None
    await asyncio.gather(*(ws.close(code, reason) for ws in list(daemon.server._ws.connections)))


@pytest.fixture
async def admin(daemon: Daemon) -> AsyncIterator[Client]:
    async with open_client(daemon.url) as ws:
        client = Client(ws)
        yield client
        await client.close()


@pytest.fixture
async def panel(daemon: Daemon) -> AsyncIterator[Client]:
    async with open_client(daemon.url, PANEL) as ws:
        client = Client(ws)
        yield client
        await client.close()


class NotifySocket:
    """The service manager's end of ``$NOTIFY_SOCKET``: a real AF_UNIX datagram socket."""

    def __init__(self, address: str) -> None:
        self.address = address  # as it goes into NOTIFY_SOCKET: a path, or "@name" (abstract)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setblocking(False)
        self.seen: list[dict[str, str]] = []  # every message received, in order

    @staticmethod
    def parse(data: bytes) -> dict[str, str]:
        return dict(line.split("=", 1) for line in data.decode().splitlines())

    async def next(self, key: str, timeout: float = 10.0) -> dict[str, str]:
        """The next message that carries *key* (earlier ones are kept in ``seen``)."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while True:
                message = self.parse(await loop.sock_recv(self.sock, 65536))
                self.seen.append(message)
                if key in message:
                    return message

    def drain(self) -> list[dict[str, str]]:
        """Whatever has arrived and not been read yet, without waiting."""
        out = []
        while True:
            try:
                out.append(self.parse(self.sock.recv(65536)))
            except BlockingIOError:
                self.seen.extend(out)
                return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest) -> Iterator[NotifySocket]:
    """Both forms systemd uses: a socket file, and an abstract name written with a leading @."""
    with tempfile.TemporaryDirectory(prefix="pictl-") as short:  # socket paths are limited to 107 bytes
        if request.param == "path":
            address = os.path.join(short, "notify")
        else:
            address = f"@pictl-test-{os.getpid()}-{uuid.uuid4().hex}"
        ns = NotifySocket(address)
        yield ns
        ns.close()


async def until(subscribe: Callable[[Callable[..., None]], Any], check: Callable[[], bool],
                timeout: float = 5.0) -> None:
    """Wait until *check()* holds, re-checked whenever the listener given to *subscribe* is called."""
    if check():
        return
    done = asyncio.Event()
    subscribe(lambda *_: check() and done.set())
    async with asyncio.timeout(timeout):
        await done.wait()


async def until_health(point: Point, online: bool, timeout: float = 5.0) -> None:
    """Wait for *point* to go online/offline (no sleeping: its health listener wakes us)."""
    await until(point.listen_health, lambda: point.online == online, timeout)


async def until_online(device: Device, online: bool, timeout: float = 5.0) -> None:
    """Wait for a device's health to flip."""
    await until(lambda cb: device.listen(lambda d, what, data: cb() if what == "status" else None),
                lambda: device.online == online, timeout)
