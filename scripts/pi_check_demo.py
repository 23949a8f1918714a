"""The README's quick start against an installed pictl, checked answer by answer (stdlib only).

    python scripts/pi_check_demo.py --pictl VENV/bin/pictl [--config config/demo.toml]

Run by scripts/pi_check.py inside the emulated Pi OS root and on the host, with the pictl of a
venv that installed the wheel. It starts ``pictl serve --config config/demo.toml --simulate`` on
a free loopback port, times start-to-ready (READY=1 on a notify socket, as systemd sees it), makes
the quick-start calls with ``pictl call`` as a user would, checks each answer, reads the daemon's
RSS, stops it (SIGTERM: outputs to safe), then runs the same config without ``--simulate`` on a
machine without GPIO and checks that it fails at once with one clear line. Prints one line per
check, then ``RESULT {json}`` with the figures; exits 1 on the first failed check.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PAGE = os.sysconf("SC_PAGE_SIZE")
ADMIN = "demo-admin"


class CheckFailed(Exception):
    """One answer was not what the README promises."""


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise CheckFailed(what)


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


class Serving:
    """``pictl serve --simulate`` with a notify socket read continuously (never left to fill)."""

    def __init__(self, pictl: str, config: str, deadline: float) -> None:
        self.pictl, self.config, self.deadline = pictl, config, deadline
        self.log: list[str] = []  # the daemon's stderr, line by line
        self.notes: list[str] = []  # every notify datagram
        self.ready = asyncio.Event()
        self.url: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.proc: asyncio.subprocess.Process | None = None
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self, tmp: str) -> float:
        """Seconds from spawn to READY=1."""
        path = os.path.join(tmp, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.setblocking(False)
        env = {k: v for k, v in os.environ.items() if k not in ("WATCHDOG_USEC", "WATCHDOG_PID")}
        env["NOTIFY_SOCKET"] = path
        t0 = time.perf_counter()
        self.proc = await asyncio.create_subprocess_exec(
            self.pictl, "serve", "--config", self.config, "--simulate", "--listen", "127.0.0.1:0",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            env=env)
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._read_log()), loop.create_task(self._read_notes(sock))]
        exited = loop.create_task(self.proc.wait())
        ready = loop.create_task(self.ready.wait())
        done, _ = await asyncio.wait({exited, ready}, timeout=self.deadline, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if ready not in done:
            exited.cancel()
            raise CheckFailed(f"not ready within {self.deadline:.0f} s; log tail: {self.log[-5:]}")
        exited.cancel()
        return time.perf_counter() - t0

    async def _read_log(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := (await self.proc.stderr.readline()).decode(errors="replace"):
            self.log.append(line.rstrip())
            if (m := re.search(r"serving (ws://\S+)", line)) and not self.url.done():
                self.url.set_result(m.group(1))

    async def _read_notes(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        with sock:
            while True:
                note = (await loop.sock_recv(sock, 4096)).decode()
                self.notes.append(note)
                if "READY=1" in note.split("\n"):
                    self.ready.set()

    async def stop(self) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.proc.wait(), self.deadline)
        finally:
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
            for task in self.tasks:
                task.cancel()
        return code


async def pictl_call(pictl: str, url: str, method: str, *params: str) -> tuple[int, Any, str, float]:
    """``pictl call`` as a user types it: exit code, the printed result (JSON), stderr, seconds."""
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        pictl, "call", method, *params, "--url", url, "--token", ADMIN,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    seconds = time.perf_counter() - t0
    result = json.loads(out) if proc.returncode == 0 else None
    return proc.returncode or 0, result, err.decode(errors="replace").strip(), seconds


def error_of(stderr: str) -> dict[str, Any]:
    """The JSON-RPC error object ``pictl call`` prints on stderr."""
    start = stderr.find("{")
    expect(start >= 0, f"no JSON error on stderr: {stderr!r}")
    return dict(json.loads(stderr[start:]))


async def quick_start(pictl: str, config: str, figures: dict[str, Any]) -> None:
    """The quick-start calls of README.md, each answer checked."""
    with tempfile.TemporaryDirectory(prefix="pictl-pi-check-") as tmp:
        daemon = Serving(pictl, config, deadline=180.0)
        figures["start_to_ready_s"] = await daemon.start(tmp)
        assert daemon.proc is not None
        url = await asyncio.wait_for(daemon.url, 30)
        figures["rss_ready_mib"] = rss_mib(daemon.proc.pid)
        print(f"ok   ready in {figures['start_to_ready_s']:.2f} s (READY=1 on the notify socket), {url}")
        try:
            await calls(pictl, url, figures)
            figures["rss_idle_mib"] = rss_mib(daemon.proc.pid)
        finally:
            code = await daemon.stop()
        expect(code == 0, f"pictl serve exited {code} on SIGTERM; log tail: {daemon.log[-5:]}")
        expect(any("outputs at their safe levels" in line for line in daemon.log), "no safe-stop line in the log")
        expect(not any("Traceback" in line for line in daemon.log), f"a traceback in the log: {daemon.log}")
        print("ok   SIGTERM: exit 0, outputs at their safe levels, no traceback in the log")


async def calls(pictl: str, url: str, figures: dict[str, Any]) -> None:
    code, res, err, s = await pictl_call(pictl, url, "door.open")
    expect(code == 0, f"door.open exited {code}: {err}")
    expect(res["state"] == "open" and res["confirmed"] is True and res["evidence"]["source"] == "door.contact",
           f"door.open answered {res}")
    figures["door_open_elapsed_ms"] = res["elapsed_ms"]
    figures["door_open_call_s"] = s
    print(f"ok   door.open confirmed by door.contact: {res['elapsed_ms']:.0f} ms of travel, {s:.2f} s for the call")

    code, res, err, s = await pictl_call(pictl, url, "sim.fault", "device=door", "fault=jammed")
    expect(code == 0, f"sim.fault exited {code}: {err}")
    code, res, err, s = await pictl_call(pictl, url, "door.close")
    expect(code == 1, f"the jammed door.close exited {code}, not 1: {res or err}")
    error = error_of(err)
    data = error.get("data", {})
    expect(error.get("code") == -32002 and data.get("expected") == "closed" and data.get("observed") == "open"
           and "released" in str(data.get("recovery")), f"the jammed door.close failed with {error}")
    code, res, err, _ = await pictl_call(pictl, url, "door.state")
    expect(code == 0 and res["actuator"] is False and res["state"] == "open", f"door.state after the jam: {res or err}")
    print(f"ok   jammed door: -32002 after {data.get('elapsed_ms', 0):.0f} ms, recovery "
          f"{data.get('recovery')!r}; door.state: actuator released, door open")
    code, res, err, _ = await pictl_call(pictl, url, "sim.clear", "device=door")
    expect(code == 0, f"sim.clear exited {code}: {err}")

    code, res, err, s = await pictl_call(pictl, url, "fan.on")
    expect(code == 0 and res["state"] == "on" and res["confirmed"] is True
           and res["evidence"]["source"] == "modbus-readback", f"fan.on: {res or err}")
    print(f"ok   fan.on confirmed by the Modbus read-back ({res['evidence'].get('address')}), {s:.2f} s")

    code, res, err, s = await pictl_call(pictl, url, "hall_temp.read")
    expect(code == 0 and isinstance(res.get("value"), float) and res.get("unit") == "°C",
           f"hall_temp.read: {res or err}")
    print(f"ok   hall_temp.read: {res['value']} {res['unit']} from the serial line sensor, {s:.2f} s")


async def without_gpio(pictl: str, config: str, figures: dict[str, Any]) -> None:
    """No /dev/gpiochip*, no device tree: one clear line and exit 1, at once."""
    if list(Path("/dev").glob("gpiochip*")):
        print("--   not tried without --simulate: this machine has /dev/gpiochip* (it would drive the pins)")
        return
    env = {k: v for k, v in os.environ.items() if k != "GPIOZERO_PIN_FACTORY"}
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        pictl, "serve", "--config", config, "--listen", "127.0.0.1:0", env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    figures["no_gpio_exit_s"] = time.perf_counter() - t0
    lines = err.decode(errors="replace").strip().splitlines()
    expect(proc.returncode == 1 and len(lines) == 1 and not out,
           f"without GPIO: exit {proc.returncode}, stdout {out!r}, stderr {lines}")
    expect("door" in lines[0] and "--simulate" in lines[0] and "Traceback" not in lines[0],
           f"without GPIO the line does not name the device and --simulate: {lines[0]}")
    print(f"ok   without --simulate on a machine without GPIO: exit 1 after {figures['no_gpio_exit_s']:.2f} s, "
          f"one line: {lines[0]}")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pictl", required=True, help="the pictl of the venv under test")
    parser.add_argument("--config", default="config/demo.toml")
    args = parser.parse_args()
    figures: dict[str, Any] = {}
    try:
        await quick_start(args.pictl, args.config, figures)
        await without_gpio(args.pictl, args.config, figures)
    except (CheckFailed, KeyError, TypeError, ValueError, TimeoutError) as exc:
        print(f"FAIL {type(exc).__name__}: {exc}")
        print("RESULT " + json.dumps(figures))
        return 1
    print("RESULT " + json.dumps(figures))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(main()))
