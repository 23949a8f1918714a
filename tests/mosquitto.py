"""A real Mosquitto (Debian's) started by a test or a benchmark: its own config, a free loopback port.

Not a service: ``mosquitto -c FILE`` in the foreground, ready once it logs that it
is running (no waiting "long enough"), stopped or killed by the caller.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from pathlib import Path

SEARCH = os.pathsep.join((os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"))  # root's tools, for others too
MOSQUITTO = shutil.which("mosquitto", path=SEARCH)
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd", path=SEARCH)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    """One broker process. ``extra`` is appended to its listener's config (TLS, password_file)."""

    def __init__(self, directory: Path, port: int | None = None, extra: str = "", *, host: str = "127.0.0.1",
                 launcher: tuple[str, ...] = ()) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.extra = extra
        self.host = host  # the listener's address
        self.launcher = launcher  # argv before mosquitto's (bench/partition.py: ip netns exec NAME)
        self.proc: asyncio.subprocess.Process | None = None
        self.log: list[str] = []  # its stderr lines
        self._reader: asyncio.Task[None] | None = None

    def config(self) -> str:
        lines = [f"listener {self.port} {self.host}", self.extra,
                 "persistence false", "set_tcp_nodelay true", "log_dest stderr",
                 "log_type error", "log_type warning", "log_type notice", "log_type information"]
        if "password_file" not in self.extra:
            lines.append("allow_anonymous true")
        if os.geteuid() == 0:
            lines.append("user root")  # stay root: the files are in a private temp dir
        return "\n".join(lines) + "\n"

    async def start(self, timeout: float = 10.0) -> None:
        assert MOSQUITTO is not None, "mosquitto is not installed (apt-get install mosquitto)"
        conf = self.directory / f"mosquitto-{self.port}.conf"
        conf.write_text(self.config())
        self.proc = await asyncio.create_subprocess_exec(*self.launcher, MOSQUITTO, "-c", str(conf),
                                                         stdout=asyncio.subprocess.DEVNULL,
                                                         stderr=asyncio.subprocess.PIPE)
        assert self.proc.stderr is not None
        async with asyncio.timeout(timeout):
            while True:
                line = (await self.proc.stderr.readline()).decode(errors="replace")
                if not line:
                    raise RuntimeError("mosquitto exited at start:\n" + "".join(self.log))
                self.log.append(line)
                if " running" in line:
                    break
        self._reader = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.log.append(line.decode(errors="replace"))

    async def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
        await self.proc.wait()
        if self._reader is not None:
            await self._reader
        self.proc = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"
