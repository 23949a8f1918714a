"""systemd/nginx-pictl.conf and systemd/haproxy-pictl.cfg, each run by the real proxy (Debian's
nginx and HAProxy) in front of a daemon that trusts it: wss:// through the proxy, Origin and
Authorization reaching pictl unchanged, and every client behind the proxy keeping its own address
(a guest guessing tokens locks out only itself; the per-address cap counts per client)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from controller.security.policy import LockoutConfig
from controller.service.daemon import Daemon
from controller.settings.load import Config
from tests.conftest import ADMIN, NEW_KEY, PANEL, ROOT, Client, sim_daemon
from tests.test_front import sample

SBIN = os.pathsep.join((os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"))
TOOLS = {"nginx": shutil.which("nginx", path=SBIN), "haproxy": shutil.which("haproxy", path=SBIN)}
NGINX_SITE = ROOT / "systemd" / "nginx-pictl.conf"
HAPROXY_CFG = ROOT / "systemd" / "haproxy-pictl.cfg"
LOCKOUT = LockoutConfig(slowdown_after=6, lockout_after=6, lockout_s=60)  # quick to reach; no slowed answers first


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tls_client() -> ssl.SSLContext:
    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
    return tls


@pytest.fixture
async def upstream(demo_config: Config) -> AsyncIterator[Daemon]:
    server = dataclasses.replace(demo_config.server, trusted_proxies=("127.0.0.1", "::1"),
                                 max_connections_per_address=4)
    d = sim_daemon(dataclasses.replace(demo_config, server=server, lockout=LOCKOUT))
    await d.start()
    try:
        yield d
    finally:
        await d.stop()


def _nginx(tmp_path: Path, tls_port: int, upstream_port: int) -> list[str]:
    site = (NGINX_SITE.read_text()
            .replace("listen 443 ssl;", f"listen 127.0.0.1:{tls_port} ssl;").replace("listen [::]:443 ssl;", "")
            .replace("listen 80;", f"listen 127.0.0.1:{free_port()};").replace("listen [::]:80;", "")
            .replace("/etc/ssl/certs/pictl.home.lan.pem", str(tmp_path / "cert.pem"))
            .replace("/etc/ssl/private/pictl.home.lan.key", str(tmp_path / "key.pem"))
            .replace("127.0.0.1:8765", f"127.0.0.1:{upstream_port}"))
    (tmp_path / "site.conf").write_text(site)
    temp = " ".join(f"{k}_temp_path {tmp_path};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (tmp_path / "nginx.conf").write_text(
        f"daemon off; pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{ access_log off; {temp} include {tmp_path}/site.conf; }}\n")
    return [str(TOOLS["nginx"]), "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)]


def _haproxy(tmp_path: Path, tls_port: int, upstream_port: int) -> list[str]:
    (tmp_path / "both.pem").write_text((tmp_path / "cert.pem").read_text() + (tmp_path / "key.pem").read_text())
    cfg = HAPROXY_CFG.read_text()
    # Run unprivileged in the foreground, logging nowhere; everything else is the shipped file.
    cfg = re.sub(r"(?m)^\s*(log /dev/log.*|chroot .*|user .*|group .*|daemon)\s*$", "", cfg)
    cfg = (cfg.replace("bind :443 ssl crt /etc/haproxy/pictl.pem", f"bind 127.0.0.1:{tls_port} ssl crt "
                       f"{tmp_path / 'both.pem'}")
           .replace("bind :80", f"bind 127.0.0.1:{free_port()}")
           .replace("server pictl 127.0.0.1:8765", f"server pictl 127.0.0.1:{upstream_port}"))
    assert f"127.0.0.1:{upstream_port}" in cfg and "timeout tunnel" in cfg and "option forwardfor" in cfg
    (tmp_path / "haproxy.cfg").write_text(cfg)
    return [str(TOOLS["haproxy"]), "-db", "-f", str(tmp_path / "haproxy.cfg")]


@pytest.fixture(params=["nginx", "haproxy"])
def proxy(request: pytest.FixtureRequest, upstream: Daemon, tmp_path: Path) -> Iterator[int]:
    """The shipped proxy config in the real proxy, on a free TLS port in front of *upstream*."""
    name = request.param
    if TOOLS[name] is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed (.ci/run installs it)")
        pytest.skip(f"{name} is not installed")
    assert upstream.server is not None
    subprocess.run(["openssl", "req", "-x509", *NEW_KEY, "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
                   check=True, capture_output=True, timeout=60)
    tls_port = free_port()
    command = (_nginx if name == "nginx" else _haproxy)(tmp_path, tls_port, upstream.server.port)
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield tls_port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def connected(port: int, timeout: float = 10.0) -> None:
    """Wait until the proxy accepts connections (it starts in the background)."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return


def wss(port: int, token: str | None = None, source: str = "127.0.0.1", **kwargs: Any) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return connect(f"wss://localhost:{port}/ws", ssl=tls_client(), additional_headers=headers,
                   local_addr=(source, 0), **kwargs)


async def status_of(port: int, token: str, source: str) -> int:
    """The status a handshake through the proxy gets (101 when it opens)."""
    try:
        async with wss(port, token, source):
            return 101
    except InvalidStatus as refused:
        return refused.response.status_code


async def test_wss_through_the_proxy_keeps_origin_and_token_checks(proxy: int, upstream: Daemon) -> None:
    await connected(proxy)
    # A browser on the panel: its https:// origin is pictl's own, told by the trusted proxy
    # (X-Forwarded-Proto); no allowed_origins needed.
    async with wss(proxy, origin=f"https://localhost:{proxy}", source="127.0.0.2") as ws:
        client = Client(ws)
        assert await client.call("session.auth", {"token": ADMIN}) == {"role": "admin"}
        assert (await client.call("door.open"))["state"] == "open"
        assert upstream.server is not None and set(upstream.server.per_address) == {"127.0.0.2"}
    with pytest.raises(InvalidStatus) as refused:
        async with wss(proxy, origin="https://evil.example"):
            pass
    assert refused.value.response.status_code == 403
    assert await status_of(proxy, "wrong-token", "127.0.0.1") == 401
    # A name pictl does not answer to (DNS rebinding) is refused through the proxy too.
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy, ssl=tls_client(), server_hostname="localhost")
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
    head = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    assert head.split()[1] == b"421"


async def test_a_guest_guessing_tokens_locks_out_only_itself(proxy: int, upstream: Daemon,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    await connected(proxy)
    guesses = [await status_of(proxy, f"guess-{i}", "127.0.0.2") for i in range(8)]
    # Meanwhile a panel elsewhere on the LAN connects with its token, and is served.
    async with wss(proxy, PANEL, "127.0.0.3") as ws:
        pong = await Client(ws).call("system.ping", timeout=5)
    after = await status_of(proxy, ADMIN, "127.0.0.2")  # even the right token, from the locked address
    assert guesses == [401] * 6 + [429] * 2 and pong == {"pong": True} and after == 429
    assert upstream.ctx is not None and upstream.ctx.auth.locked_for("127.0.0.2") > 0
    assert upstream.ctx.auth.locked_for("127.0.0.1") == 0  # the proxy itself is not locked out
    with capsys.disabled():
        print(f"\n  through the proxy: guesser saw {guesses}, then {after} with a right token; "
              f"another client saw 101 and {pong}")


async def test_the_connection_cap_counts_each_client_behind_the_proxy(proxy: int, upstream: Daemon) -> None:
    await connected(proxy)
    hogs = [await wss(proxy, PANEL, "127.0.0.4") for _ in range(4)]  # max_connections_per_address = 4
    try:
        assert await status_of(proxy, PANEL, "127.0.0.4") == 429
        async with wss(proxy, PANEL, "127.0.0.5") as ws:  # another client is not affected
            assert await Client(ws).call("system.ping", timeout=5) == {"pong": True}
    finally:
        for ws in hogs:
            await ws.close()
    assert sample(upstream, "pictl_ws_refused_total", reason="too_many_from_address") == 1
