"""Fixtures: a daemon on the demo plant over a real WebSocket, and a small JSON-RPC client."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import select
import socket
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio
from hypothesis import settings
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from controller.devices import door as door_kind
from controller.devices import switch as switch_kind
from controller.devices.base import Device
from controller.service import configfile as config
from controller.service.daemon import Daemon
from controller.settings.load import Config
from drivers.base import Point
from tests.browser import BROWSER_MISSING, CHROMIUM, CHROMIUM_ARGS, async_playwright

if TYPE_CHECKING:
    from playwright.async_api import Browser

# CI runs the fuzz suite on a fixed set of examples (the same every run); developers get fresh ones.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``long`` (seconds each, mostly waiting on other processes) run first, a group of
    them (``xdist_group``: one worker runs it all) before the others: under pytest-xdist one started
    last would finish the run alone. The same order on every worker."""
    items.sort(key=lambda item: (item.get_closest_marker("long") is None,
                                 item.get_closest_marker("xdist_group") is None))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Under ``--dist loadgroup`` (make test), tests marked ``xdist_group`` must carry their group in
    their node id, which is how pytest-xdist keeps them on one worker. Some pytest releases silently
    break that (pyproject.toml pins around it): fail loudly rather than run a module's shared router
    on every worker."""
    if not session.config.getoption("loadgroup", default=False):
        return
    ungrouped = [item.nodeid for item in session.items
                 if any(True for _ in item.iter_markers("xdist_group")) and "@" not in item.nodeid]
    if ungrouped:
        raise pytest.UsageError(f"pytest-xdist's grouping does not work with this pytest: {ungrouped[0]}")


ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "config" / "demo.toml"
DEMO_TEXT = DEMO.read_text()
# The demo's GPIO half (door and light): for tests that count events, devices or status lines,
# which the sensor's steady readings and the Modbus fan would make depend on timing.
DEMO_GPIO_TEXT = DEMO_TEXT.split("\n# A Modbus TCP link")[0] + "\n"
ADMIN = "demo-admin"
PANEL = "demo-panel"

# The simulated plant's clock in tests: its physics run ten times faster than the demo's (README's
# figures: a door travels in 0.3 s, a lamp's feedback follows in 0.05 s, the sensor prints every
# 0.5 s). Tests derive every travel time from these, never from a literal.
TIME_SCALE = 0.1
TRAVEL_S = door_kind.TRAVEL_S * TIME_SCALE  # a simulated door's travel in tests
FEEDBACK_S = switch_kind.FEEDBACK_S * TIME_SCALE  # a simulated lamp's feedback in tests
# The tests' deadlines for a call that should succeed: far above the scaled travel, for a 2-core
# machine running four test workers and more (under load a 0.03 s door was seen confirmed after 0.5 s,
# a 0.005 s lamp after 0.63 s). A test that waits for a failure gives its call a short timeout of its
# own. Distinct values, so a test can rewrite one of them.
DOOR_TIMEOUT_S = 1.5
LIGHT_TIMEOUT_S = 1.0
FAN_TIMEOUT_S = 1.2
MODBUS_TIMEOUT_S = 0.2
MODBUS_POLL_S = 0.1
SENSOR_STALE_S = 0.5

# `openssl req` arguments for a test key: an EC P-256 key is made in a millisecond (RSA 2048: a
# CPU-second on a loaded machine); the TLS being tested is the same.
NEW_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]


def edit(text: str, old: str, new: str) -> str:
    """*text* with *old* replaced by *new*; fails loudly when *old* is not there (the demo changed)."""
    assert old in text, f"not in the config any more: {old!r}"
    return text.replace(old, new)


def fast(text: str) -> str:
    """A demo config (or its GPIO half) with the tests' deadlines instead of the demo's."""
    text = edit(text, "relay = { gpio = 17 }\ncontact = { gpio = 27, pull = \"up\" }\nopen_when = \"inactive\"\n"
                      "timeout = 2.0", f"relay = {{ gpio = 17 }}\ncontact = {{ gpio = 27, pull = \"up\" }}\n"
                      f"open_when = \"inactive\"\ntimeout = {DOOR_TIMEOUT_S}")
    text = edit(text, 'feedback = { gpio = 23, pull = "down" }\ntimeout = 1.0',
                f'feedback = {{ gpio = 23, pull = "down" }}\ntimeout = {LIGHT_TIMEOUT_S}')
    if "[modbus.plant]" in text:
        text = edit(text, "timeout = 0.5\npoll_interval = 0.5\noffline_after = 2\nbackoff_max = 2.0",
                    f"timeout = {MODBUS_TIMEOUT_S}\npoll_interval = {MODBUS_POLL_S}\noffline_after = 2\n"
                    f"backoff_max = {4 * MODBUS_POLL_S}")
        text = edit(text, "device_id = 1 }\ntimeout = 1.0", f"device_id = 1 }}\ntimeout = {FAN_TIMEOUT_S}")
        text = edit(text, "stale_after = 2.0", f"stale_after = {SENSOR_STALE_S}")
    return text


TEST_TEXT = fast(DEMO_TEXT)  # the demo plant with the tests' deadlines
TEST_GPIO_TEXT = fast(DEMO_GPIO_TEXT)


def failing_fast(text: str) -> Config:
    """A test config whose door and light give up after a third of their deadline: for a test whose
    every action on them fails (jammed, no feedback) and that waits for the panel to say so."""
    text = edit(text, f"timeout = {DOOR_TIMEOUT_S}", f"timeout = {DOOR_TIMEOUT_S / 3}")
    return config.loads(edit(text, f"timeout = {LIGHT_TIMEOUT_S}", f"timeout = {LIGHT_TIMEOUT_S / 3}"), str(DEMO))


@pytest.fixture
def time_scale() -> float:
    """The plant's clock for the ``daemon`` fixture; a module may override this fixture."""
    return TIME_SCALE


@pytest.fixture
def demo_config() -> Config:
    return config.loads(TEST_TEXT, str(DEMO))


def gpio_demo() -> Config:
    """The demo's GPIO half as a config, with the tests' deadlines (see DEMO_GPIO_TEXT)."""
    return config.loads(TEST_GPIO_TEXT, str(DEMO))


def on_gpio_demo() -> Any:
    """``demo_config = on_gpio_demo()`` in a test module runs its daemons on the demo's GPIO half:
    for tests that count events, tiles or status lines, which the sensor's steady readings and
    two more devices would change (tests/test_e2e_fan_sensor.py covers those devices)."""

    @pytest.fixture(name="demo_config")
    def gpio_demo_config() -> Config:
        return gpio_demo()

    return gpio_demo_config


def sim_daemon(cfg: Config, *, port: int = 0, time_scale: float = TIME_SCALE) -> Daemon:
    """A daemon on the simulated plant at the tests' time scale, on a free loopback port."""
    return Daemon(cfg, simulate=True, host="127.0.0.1", port=port, time_scale=time_scale)


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


def daemon_fixtures(loop_scope: str) -> tuple[Any, Any, Any]:
    """The ``daemon`` (on the demo plant at the tests' time scale), ``admin`` and ``panel`` (clients
    with those roles) fixtures, on the event loop of *loop_scope* (pytest-asyncio)."""

    @pytest_asyncio.fixture(name="daemon", loop_scope=loop_scope)
    async def daemon(demo_config: Config, time_scale: float) -> AsyncIterator[Daemon]:
        d = sim_daemon(demo_config, time_scale=time_scale)
        await d.start()
        try:
            yield d
        finally:
            await d.stop()

    async def client(daemon: Daemon, token: str) -> AsyncIterator[Client]:
        async with open_client(daemon.url, token) as ws:
            linked = Client(ws)
            yield linked
            await linked.close()

    @pytest_asyncio.fixture(name="admin", loop_scope=loop_scope)
    async def admin(daemon: Daemon) -> AsyncIterator[Client]:
        async for linked in client(daemon, ADMIN):
            yield linked

    @pytest_asyncio.fixture(name="panel", loop_scope=loop_scope)
    async def panel(daemon: Daemon) -> AsyncIterator[Client]:
        async for linked in client(daemon, PANEL):
            yield linked

    return daemon, admin, panel


daemon, admin, panel = daemon_fixtures("function")


# Browser tests: one Playwright and one Chromium serve every browser test of a test process (each
# pytest-xdist worker has its own), on the session's event loop. A module of browser tests marks its
# async tests @on_browser_loop and says  daemon, admin, panel = daemon_fixtures("session")  so that
# its tests, their daemons and their clients run on that loop too.
on_browser_loop = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def shared_chromium() -> AsyncIterator[Browser]:
    assert async_playwright is not None, BROWSER_MISSING
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest_asyncio.fixture(loop_scope="session")
async def browser(shared_chromium: Browser) -> AsyncIterator[Browser]:
    """The shared Chromium; the contexts (pages, storage) a test opens are closed after it."""
    try:
        yield shared_chromium
    finally:
        for context in list(shared_chromium.contexts):
            await context.close()


class NotifySocket:
    """The service manager's end of ``$NOTIFY_SOCKET``: a real AF_UNIX datagram socket, read as systemd
    reads it, continuously (a thread), so the kernel's small datagram queue never fills while a test
    is busy elsewhere. Every message is kept in arrival order; ``next`` and ``drain`` hand them out."""

    def __init__(self, address: str) -> None:
        self.address = address  # as it goes into NOTIFY_SOCKET: a path, or "@name" (abstract)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setblocking(False)
        self.seen: list[dict[str, str]] = []  # every message received, in order
        self._handed = 0  # how many of them next() and drain() have handed out
        self._arrived = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._wake_r, self._wake_w = os.pipe()  # close() wakes the reader through it
        self._reader = threading.Thread(target=self._receive, name=f"notify {address}", daemon=True)
        self._reader.start()

    @staticmethod
    def parse(data: bytes) -> dict[str, str]:
        return dict(line.split("=", 1) for line in data.decode().splitlines())

    def _pull(self) -> int:
        """Move every datagram the kernel holds into ``seen`` (the caller holds ``_arrived``)."""
        before = len(self.seen)
        while True:
            try:
                self.seen.append(self.parse(self.sock.recv(65536)))
            except BlockingIOError:
                return len(self.seen) - before

    def _receive(self) -> None:
        while True:
            ready, _, _ = select.select([self.sock, self._wake_r], [], [])
            if self._wake_r in ready:
                return
            with self._arrived:
                if not self._pull():
                    continue  # drain() took them first
                waiters = list(self._waiters)
            for loop, event in waiters:
                loop.call_soon_threadsafe(event.set)

    def _take(self, key: str | None) -> dict[str, str] | None:
        """The next message not handed out yet (the next that carries *key*, skipping others)."""
        with self._arrived:
            while self._handed < len(self.seen):
                message = self.seen[self._handed]
                self._handed += 1
                if key is None or key in message:
                    return message
        return None

    async def next(self, key: str, timeout: float = 10.0) -> dict[str, str]:
        """The next message that carries *key* (those skipped stay in ``seen``)."""
        event = asyncio.Event()
        waiter = (asyncio.get_running_loop(), event)
        with self._arrived:
            self._waiters.add(waiter)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    event.clear()  # before looking: a message arriving after the look sets it again
                    message = self._take(key)
                    if message is not None:
                        return message
                    await event.wait()
        finally:
            with self._arrived:
                self._waiters.discard(waiter)

    def drain(self) -> list[dict[str, str]]:
        """Whatever has arrived and not been handed out yet, without waiting: everything sent before
        this call is in it (the kernel's queue is read here too)."""
        with self._arrived:
            self._pull()
        out = []
        while (message := self._take(None)) is not None:
            out.append(message)
        return out

    def close(self) -> None:
        os.write(self._wake_w, b"x")
        self._reader.join(5)
        self.sock.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


def notify_address(form: str, directory: str) -> str:
    """A NOTIFY_SOCKET address in one of the two forms systemd uses: a socket file in *directory*, or an
    abstract name written with a leading @."""
    return os.path.join(directory, "notify") if form == "path" else f"@pictl-test-{os.getpid()}-{uuid.uuid4().hex}"


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    """The manager's end at a socket file (tests/test_sdnotify.py tries the abstract form too)."""
    with tempfile.TemporaryDirectory(prefix="pictl-") as short:  # socket paths are limited to 107 bytes
        ns = NotifySocket(notify_address("path", short))
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
