"""systemd/nginx-pictl.conf, run by a real nginx (when installed) in front of a daemon:
wss:// through the proxy, with Origin and Authorization reaching pictl unchanged."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from controller.service.daemon import Daemon
from controller.settings.load import Config
from tests.conftest import ADMIN, ROOT

NGINX = shutil.which("nginx", path=os.pathsep.join((os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin")))
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed")
SNIPPET = ROOT / "systemd" / "nginx-pictl.conf"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def upstream(demo_config: Config) -> AsyncIterator[tuple[Daemon, int]]:
    tls_port = free_port()
    origin = f"https://localhost:{tls_port}"
    cfg = dataclasses.replace(demo_config, server=dataclasses.replace(demo_config.server, allowed_origins=(origin,)))
    d = Daemon(cfg, simulate=True, host="127.0.0.1", port=0)
    await d.start()
    try:
        yield d, tls_port
    finally:
        await d.stop()


@pytest.fixture
def proxy(upstream: tuple[Daemon, int], tmp_path: Path) -> Iterator[int]:
    daemon, tls_port = upstream
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
                   check=True, capture_output=True, timeout=60)
    site = (SNIPPET.read_text()
            .replace("listen 443 ssl;", f"listen 127.0.0.1:{tls_port} ssl;").replace("listen [::]:443 ssl;", "")
            .replace("listen 80;", f"listen 127.0.0.1:{free_port()};").replace("listen [::]:80;", "")
            .replace("/etc/ssl/certs/pictl.home.lan.pem", str(tmp_path / "cert.pem"))
            .replace("/etc/ssl/private/pictl.home.lan.key", str(tmp_path / "key.pem"))
            .replace("127.0.0.1:8765", f"127.0.0.1:{daemon.server.port}"))
    (tmp_path / "site.conf").write_text(site)
    temp = " ".join(f"{k}_temp_path {tmp_path};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (tmp_path / "nginx.conf").write_text(
        f"daemon off; pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{ access_log off; {temp} include {tmp_path}/site.conf; }}\n")
    assert NGINX is not None
    proc = subprocess.Popen([NGINX, "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)],
                            stderr=subprocess.PIPE)
    try:
        yield tls_port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def connected(port: int, timeout: float = 10.0) -> None:
    """Wait until nginx accepts connections (it starts in the background)."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return


async def test_wss_through_nginx_keeps_origin_and_token_checks(proxy: int) -> None:
    await connected(proxy)
    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
    url = f"wss://localhost:{proxy}/ws"
    async with connect(url, ssl=tls, origin=f"https://localhost:{proxy}") as ws:  # a browser on the panel
        await ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "session.auth", "params": {"token": ADMIN}}))
        assert json.loads(await ws.recv())["result"] == {"role": "admin"}
        await ws.send(json.dumps({"jsonrpc": "2.0", "id": 2, "method": "door.open"}))
        assert json.loads(await ws.recv())["result"]["state"] == "open"
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, ssl=tls, origin="https://evil.example"):
            pass
    assert refused.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, ssl=tls, additional_headers={"Authorization": "Bearer wrong-token"}):
            pass
    assert refused.value.response.status_code == 401
