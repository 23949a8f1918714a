"""The example scripts a home-automation user would start from, run as scripts on the demo plant (issue 7)."""

from __future__ import annotations

import asyncio
import csv
import io
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from controller.client import Client
from controller.service.daemon import Daemon
from tests.conftest import ADMIN, PANEL, ROOT, close_all, on_gpio_demo

demo_config = on_gpio_demo()


EXAMPLES = ROOT / "examples"


class Script:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def ready(self) -> str:
        """Its first stderr line, written once it is subscribed."""
        assert self.proc.stderr is not None
        async with asyncio.timeout(10):
            line = (await self.proc.stderr.readline()).decode()
        assert line, "the script exited before it was ready"
        return line

    async def line(self) -> str:
        assert self.proc.stdout is not None
        async with asyncio.timeout(10):
            return (await self.proc.stdout.readline()).decode().strip()

    async def exit_code(self) -> int:
        async with asyncio.timeout(10):
            return await self.proc.wait()


@pytest.fixture
async def script(daemon: Daemon) -> AsyncIterator:
    started: list[Script] = []

    async def start(name: str, *args: str) -> Script:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(EXAMPLES / name), "--url", daemon.url, "--token", PANEL, *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        started.append(Script(proc))
        return started[-1]

    yield start
    for s in started:
        if s.proc.returncode is None:
            s.proc.kill()
            await s.proc.wait()


async def test_light_goes_on_when_the_door_opens_after_dark_only(daemon: Daemon, script) -> None:
    by_day = await script("light_after_dark.py", "--now", "12:00", "--dark-after", "19:00", "--dark-before", "07:00")
    at_night = await script("light_after_dark.py", "--now", "23:30", "--dark-after", "19:00",
                            "--dark-before", "07:00", "--once")
    assert "dark from 19:00 to 07:00" in await by_day.ready()
    await at_night.ready()
    async with Client(daemon.url, ADMIN) as admin:
        await admin.call("door.open")
        assert await by_day.line() == "12:00 door opened; it is light: light left alone"
        assert (await at_night.line()).startswith("23:30 door opened in the dark: light on (confirmed in ")
        assert await at_night.exit_code() == 0
        assert (await admin.call("light.state"))["state"] == "on"


def test_dark_hours_may_cross_midnight_or_not() -> None:
    sys.path.insert(0, str(EXAMPLES))
    try:
        from light_after_dark import hhmm, is_dark
    finally:
        sys.path.remove(str(EXAMPLES))
    assert is_dark(hhmm("23:00"), hhmm("19:00"), hhmm("07:00"))
    assert is_dark(hhmm("06:59"), hhmm("19:00"), hhmm("07:00"))
    assert not is_dark(hhmm("07:00"), hhmm("19:00"), hhmm("07:00"))
    assert is_dark(hhmm("02:00"), hhmm("01:00"), hhmm("05:00"))
    assert not is_dark(hhmm("05:30"), hhmm("01:00"), hhmm("05:00"))


async def test_events_are_logged_to_csv_across_a_dropped_link(daemon: Daemon, script, tmp_path: Path) -> None:
    out = tmp_path / "log.csv"
    logger = await script("log_events_csv.py", "--out", str(out), "--count", "4", "*.state")
    assert "logging *.state" in await logger.ready()
    async with Client(daemon.url, ADMIN) as admin:
        await admin.call("light.on")
        await close_all(daemon)  # the logger's link drops too; it resumes and misses nothing
    async with Client(daemon.url, ADMIN) as admin:
        await admin.call("door.open")
    assert await logger.exit_code() == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [(r["topic"], r["value"]) for r in rows] == [
        ("light.state", "off"), ("light.state", "on"), ("door.state", "moving"), ("door.state", "open")]
    assert [int(r["seq"]) for r in rows] == list(range(int(rows[0]["seq"]), int(rows[0]["seq"]) + 4))
    assert all(r["time"].endswith("Z") and r["data"].startswith("{") for r in rows)


async def test_a_door_left_open_is_closed_after_n_seconds(daemon: Daemon, script) -> None:
    closer = await script("close_door_left_open.py", "--after", "0.2", "--once")
    assert "closing it after 0.2 s open" in await closer.ready()
    async with Client(daemon.url, ADMIN) as admin:
        events = await admin.events("door.state").start()
        await admin.call("door.open")
        opened_at = time.monotonic()
        async with asyncio.timeout(10):
            async for event in events:
                if event.data["state"] == "closed":
                    break
        assert time.monotonic() - opened_at >= 0.2
        assert event.data["cause"] == "rpc"
    assert (await closer.line()).startswith("door open for 0.2 s: closed (confirmed in ")
    assert await closer.exit_code() == 0


async def test_a_door_closed_in_time_is_left_alone(daemon: Daemon, script) -> None:
    closer = await script("close_door_left_open.py", "--after", "0.3")
    await closer.ready()
    async with Client(daemon.url, ADMIN) as admin:
        events = await admin.events("door.state").start()
        await admin.call("door.open")
        await admin.call("door.close")  # closed by hand before the 0.3 s were up
        await admin.call("door.open")  # open again: a fresh 0.3 s
        opened_at = time.monotonic()
        async with asyncio.timeout(10):
            async for event in events:
                if event.data["state"] == "closed" and event.data["cause"] == "rpc" and \
                        time.monotonic() - opened_at > 0.05:
                    break
        assert time.monotonic() - opened_at >= 0.3  # the first timer was cancelled, not just late
    assert (await closer.line()).startswith("door open for 0.3 s: closed")
