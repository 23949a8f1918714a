"""What bench/soak.py and bench/scale.py share: the daemon as a child process, its /proc
figures, percentiles and a least-squares slope."""

from __future__ import annotations

import asyncio
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PICTL = str(Path(sys.executable).parent / "pictl")
PAGE = os.sysconf("SC_PAGE_SIZE")
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Daemon:
    """``pictl serve --simulate`` on *config* as a child process; its log is read as it goes and
    each line offered to *on_line*."""

    def __init__(self, config: Path, on_line: Callable[[str], None] | None = None, *,
                 launcher: list[str] | None = None, env: dict[str, str] | None = None,
                 listen: str = "127.0.0.1:0", tree: Path | None = None, nofile: int | None = None) -> None:
        self.config = config
        self.on_line = on_line
        self.launcher = launcher or [PICTL]  # argv before "serve": the pictl script, or bench/traced.py
        self.env = env  # added to the environment (PYTHONMALLOC, MALLOC_ARENA_MAX, ...)
        self.listen = listen
        self.tree = tree  # another source tree to run (a baseline unpacked from git); None: this one
        self.nofile = nofile  # the child's soft limit on open files (a unit without LimitNOFILE: 1024)
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self.ready_s = 0.0  # spawn to the "serving" line
        self._reader: asyncio.Task[None] | None = None

    def _command(self) -> list[str]:
        args = ["serve", "--config", str(self.config), "--simulate", "--listen", self.listen]
        return [*(tree_launcher(self.tree) if self.tree is not None else self.launcher), *args]

    def _limits(self) -> None:  # in the child, before exec
        if self.nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    async def start(self) -> float:
        t0 = time.perf_counter()
        self.proc = await asyncio.create_subprocess_exec(
            *self._command(), stderr=asyncio.subprocess.PIPE, cwd=self.tree or ROOT,
            env={**os.environ, **self.env} if self.env else None,
            preexec_fn=self._limits if self.nofile is not None else None)
        assert self.proc.stderr is not None
        while True:
            line = (await asyncio.wait_for(self.proc.stderr.readline(), 60)).decode()
            if not line:
                raise RuntimeError("pictl exited before serving")
            match = re.search(r"serving (wss?://\S+)", line)
            if match:
                self.url = match.group(1)
                break
        self.ready_s = time.perf_counter() - t0
        self._reader = asyncio.get_running_loop().create_task(self._read_log())
        return self.ready_s

    async def _read_log(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := (await self.proc.stderr.readline()).decode(errors="replace"):
            if self.on_line is not None:
                self.on_line(line)

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def rss_kib(self) -> int:
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE // 1024

    def fds(self) -> int:
        assert self.proc is not None
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def cpu_s(self) -> float:
        """utime + stime so far."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    async def stop(self) -> None:
        await stop_child(self.proc, self._reader)


async def stop_child(proc: asyncio.subprocess.Process | None, reader: asyncio.Task[None] | None) -> None:
    """SIGTERM a child process started by a bench, then wait for it and for its log reader (with deadlines)."""
    if proc is not None and proc.returncode is None:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
    if reader is not None:
        await asyncio.wait_for(reader, 10)


def raise_fd_limit() -> None:
    """As many open files as the hard limit allows (thousands of connections, both ends here)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 1 << 20)), hard))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def p50_p99(values: list[float]) -> list[float] | None:
    if not values:
        return None
    return [round(statistics.median(values), 3), round(pct(values, 0.99), 3)]


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0


def unpack(rev: str, into: Path) -> Path | None:
    """The tree at *rev*, from this repository's git history; None when git cannot give it."""
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev], check=True,
                                 capture_output=True, timeout=120).stdout
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return None
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4
            tar.extractall(into, filter="data")
        else:  # our own repository's history: trusted
            tar.extractall(into)
    return into


def tree_launcher(tree: Path) -> list[str]:
    """argv that runs the ``pictl`` of an unpacked *tree* (its own CLI module, wherever it lived)."""
    cli = "controller.service.cli" if (tree / "controller" / "service" / "cli.py").exists() else "controller.cli"
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(tree)!r}); from {cli} import main; "
            "sys.exit(main())"]  # argparse reads sys.argv[1:]: what follows -c's code
