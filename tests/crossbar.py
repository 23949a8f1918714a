"""A Crossbar.io router on loopback, for the fleet demo, the tests and the benchmarks.

Crossbar pins an older websockets than pictl needs, so it lives in its own virtualenv
(``scripts/crossbar-venv.sh`` makes ``.venv-crossbar``; ``$PICTL_CROSSBAR`` names another
``crossbar`` executable). This module writes a node config (version 2: one router worker, one
realm, a WebSocket transport on a loopback port), starts ``crossbar start`` and waits until the
port answers. It is a development tool: a building's router runs on a server with TLS and an
authenticated role per node (see the README), not from here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VENV = ROOT / ".venv-crossbar"
START_DEADLINE_S = 60.0  # a cold start on a loaded 2-core machine takes a few seconds
STOP_DEADLINE_S = 15.0


def crossbar_executable() -> str | None:
    """The crossbar command to run, or None when it is not installed."""
    named = os.environ.get("PICTL_CROSSBAR")
    if named:
        return named if os.access(named, os.X_OK) else None
    own = DEFAULT_VENV / "bin" / "crossbar"
    if os.access(own, os.X_OK):
        return str(own)
    return shutil.which("crossbar")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def router_config(port: int, realm: str, tickets: dict[str, str] | None = None) -> dict[str, Any]:
    """A loopback router: anyone may call, register, publish and subscribe in *realm* (a demo's
    trust model, not a building's), and callers are disclosed so pictl can rate-limit per caller.
    *tickets* (authid -> ticket) adds WAMP-Ticket principals beside anonymous access."""
    everything = {"uri": "", "match": "prefix",
                  "allow": {"call": True, "register": True, "publish": True, "subscribe": True},
                  "disclose": {"caller": True, "publisher": False}, "cache": True}
    auth: dict[str, Any] = {"anonymous": {"type": "static", "role": "anonymous"}}
    if tickets:
        auth["ticket"] = {"type": "static", "principals": {
            authid: {"ticket": ticket, "role": "node"} for authid, ticket in tickets.items()}}
    return {
        "version": 2,
        "controller": {},
        "workers": [{
            "type": "router",
            "realms": [{"name": realm, "roles": [{"name": "anonymous", "permissions": [everything]},
                                                 {"name": "node", "permissions": [everything]}]}],
            "transports": [{
                "type": "websocket",
                "endpoint": {"type": "tcp", "interface": "127.0.0.1", "port": port},
                "auth": auth,
                "options": {"auto_ping_interval": 10000, "auto_ping_timeout": 5000},
            }],
        }],
    }


class CrossbarRouter:
    """One ``crossbar start`` process on a loopback port; restartable on the same port."""

    def __init__(self, *, port: int | None = None, realm: str = "realm1", tickets: dict[str, str] | None = None,
                 workdir: str | None = None) -> None:
        executable = crossbar_executable()
        if executable is None:
            raise FileNotFoundError("crossbar is not installed: run scripts/crossbar-venv.sh (make crossbar)")
        self.executable = executable
        self.port = port or free_port()
        self.realm = realm
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="pictl-crossbar-"))
        self.cbdir = self.workdir / ".crossbar"
        self.cbdir.mkdir(parents=True, exist_ok=True)
        (self.cbdir / "config.json").write_text(json.dumps(router_config(self.port, realm, tickets), indent=1))
        self.log_path = self.workdir / "crossbar.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self) -> None:
        """Start the router and return once its WebSocket port accepts connections."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        try:
            self.process = subprocess.Popen(
                [self.executable, "start", "--cbdir", str(self.cbdir), "--loglevel", "warn"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"crossbar exited with {self.process.returncode}: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"crossbar did not listen on {self.port} within {START_DEADLINE_S:.0f} s")

    def stop(self) -> None:
        """Stop the router (SIGTERM to its process group, SIGKILL if it lingers)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(STOP_DEADLINE_S)
        with contextlib.suppress(ProcessLookupError):  # a worker that outlived its controller
            os.killpg(process.pid, signal.SIGKILL)

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> CrossbarRouter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
