"""Scale curves: what each added connection, device and subscriber costs, fitted and drawn.

    .venv/bin/python bench/scale.py            # full sizes (several minutes), charts into docs/
    .venv/bin/python bench/scale.py --quick    # small sizes, no charts: checks it runs (CI)

Three curves, each against ``pictl serve --simulate`` as a child process:

- connections: 100 / 1,000 / 5,000 idle authenticated WebSocket connections: RSS, RSS per
  connection, idle CPU, and system.ping p50/p99 on one more connection with them all open;
- devices: a generated config of 4 / 50 / 200 devices (GPIO switches with feedback, the rest
  Modbus coil switches, 25 per unit): start to ready, RSS, idle CPU, system.status round trip,
  and one Modbus poll cycle (all units of the link) timed in process;
- events: 100 and 1,000 subscribers (in a separate process, so the daemon and its readers do not
  share one interpreter) to ``*``, while GPIO switches are toggled at rising rates; per rate the
  events delivered per subscriber per second, the daemon's CPU, and system.ping p50/p90/p99 on a
  probe connection, until the pings slow (p90 over 10 ms: p99 alone is at the mercy of a shared
  machine's scheduler) or the subscribers get less than 80% of what was published. Before the
  curve, at the largest subscriber count, ``system.ping`` idle and at 100 events/s in alternating
  blocks (idle, loaded, loaded, idle, ...: the machine's drift falls on both), under each way of
  keeping the bench's own load (the subscribers' process: stand-ins for 1,000 panels on other
  machines) off the daemon and the probe (``--isolate``): none, the subscribers pinned to a core
  the daemon and the probe do not use, nice 19 on them, or them under SCHED_IDLE. The toggles'
  driver (this process, 100 paced sends a second) keeps its place: starved, it sends its toggles
  in bursts, and the daemon's replies wait behind a burst of actions that no client would send.
  Each block records how long the daemon's and the probe's threads waited for a core
  (schedstat), the daemon's garbage collections of 1 ms or more, and the largest burst of
  toggles the driver had to send at once.

For each curve a least-squares slope (the cost per added unit) is printed, and with --charts
(the default on full runs) drawn into docs/scale-*.png with matplotlib (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import ROOT, Daemon, p50_p99, pct, raise_fd_limit, slope, tree_launcher, unpack
from websockets.asyncio.client import ClientConnection, connect

ADMIN = {"Authorization": "Bearer demo-admin"}
PING = '{"jsonrpc":"2.0","id":1,"method":"system.ping"}'
STATUS = '{"jsonrpc":"2.0","id":1,"method":"system.status"}'
COILS_PER_UNIT = 25
PAIRED_RATE = 100  # events/s: the p99 check's load (issue 24: within 2 ms of idle at 1,000 subscribers)
SLOW_P90_MS = 10.0  # "replies slow": one ping in ten waits longer than this behind the fan-out
GPIO_PAIRS = [(4 + 2 * i, 5 + 2 * i) for i in range(8)]  # relay, feedback: BCM 4-19
GPIO_OUTPUTS = list(range(4, 28))  # output-only switches for the events curve
BASELINE = "bce0bb1"  # the fan-out as it was: every event's broadcast to every subscriber in one go


def demo_head() -> str:
    """config/demo.toml's server and auth sections, with room for thousands of connections."""
    text = (ROOT / "config" / "demo.toml").read_text()
    head = text.split("\n# A door driven by a relay")[0]
    return head.replace("[server]\n", "[server]\nmax_connections = 10000\nmax_connections_per_address = 10000\n", 1)


def generated_config(devices: int) -> str:
    """*devices* switches: a quarter (at most 8) GPIO with feedback, the rest Modbus coils."""
    gpio = min(max(1, devices // 4), len(GPIO_PAIRS))
    modbus = devices - gpio
    parts = [demo_head()]
    for i in range(gpio):
        relay, feedback = GPIO_PAIRS[i]
        parts.append(f'[devices.g{i}]\nkind = "switch"\noutput = {{ gpio = {relay} }}\n'
                     f'feedback = {{ gpio = {feedback}, pull = "down" }}\n')
    if modbus:
        parts.append('[modbus.plant]\ntransport = "tcp"\nhost = "127.0.0.1"\nport = 5020\ntimeout = 0.5\n'
                     'poll_interval = 0.5\noffline_after = 2\nbackoff_max = 2.0\n')
    for i in range(modbus):
        unit, coil = divmod(i, COILS_PER_UNIT)
        parts.append(f'[devices.m{i}]\nkind = "switch"\n'
                     f'output = {{ modbus = "plant", coil = {coil}, device_id = {unit + 1} }}\n')
    return "\n".join(parts)


def outputs_config(count: int) -> str:
    """*count* GPIO switches without feedback (confirmed by read-back at once): an event source
    the daemon can drive as fast as it is asked."""
    parts = [demo_head()]
    for i in range(count):
        parts.append(f'[devices.o{i}]\nkind = "switch"\noutput = {{ gpio = {GPIO_OUTPUTS[i]} }}\n')
    return "\n".join(parts)


def write(text: str) -> Path:
    fd, name = tempfile.mkstemp(prefix="pictl-scale-", suffix=".toml")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return Path(name)


async def started(text: str, launcher: list[str] | None = None,
                  on_line: Callable[[str], None] | None = None) -> tuple[Daemon, Path]:
    path = write(text)
    daemon = Daemon(path, on_line, launcher=launcher)
    await daemon.start()
    return daemon, path


async def stopped(daemon: Daemon, path: Path) -> None:
    await daemon.stop()
    path.unlink()


async def open_links(url: str, n: int) -> list[ClientConnection]:
    links: list[ClientConnection] = []
    while len(links) < n:  # in waves: the listen backlog is finite
        wave = min(100, n - len(links))
        links.extend(await asyncio.gather(*(connect(url, additional_headers=ADMIN, compression=None,
                                                    open_timeout=60, ping_interval=None)
                                            for _ in range(wave))))
    return links


async def round_trips(url: str, frame: str, calls: int) -> list[float]:
    """Sequential calls on one connection: each round trip in ms."""
    out = []
    async with connect(url, additional_headers=ADMIN, compression=None, max_size=None) as ws:
        for _ in range(calls):
            t = time.perf_counter()
            await ws.send(frame)
            await ws.recv()
            out.append((time.perf_counter() - t) * 1000)
    return out


async def idle_cpu(daemon: Daemon, seconds: float) -> float:
    """% of one core over *seconds* with nothing asked of it."""
    c0, t0 = daemon.cpu_s(), time.monotonic()
    await asyncio.sleep(seconds)  # measuring idleness: there is nothing to await but time
    return (daemon.cpu_s() - c0) / (time.monotonic() - t0) * 100


# -- connections ----------------------------------------------------------------------------------

async def connections(sizes: list[int], quick: bool) -> dict[str, Any]:
    daemon, path = await started(outputs_config(2))
    rows = []
    links: list[ClientConnection] = []
    try:
        await round_trips(daemon.url, PING, 200)  # warm up
        base = daemon.rss_kib()
        for n in sizes:
            links.extend(await open_links(daemon.url, n - len(links)))
            pings = await round_trips(daemon.url, PING, 300 if quick else 2000)
            rss = daemon.rss_kib()
            cpu = await idle_cpu(daemon, 2 if quick else 20)
            rows.append({"connections": n, "rss_mib": round(rss / 1024, 1),
                         "kib_per_connection": round((rss - base) / n, 2), "idle_cpu_pct": round(cpu, 2),
                         "ping_ms_p50_p99": p50_p99(pings)})
            print(f"  connections {rows[-1]}", file=sys.stderr, flush=True)
    finally:
        await asyncio.gather(*(ws.close() for ws in links))
        await stopped(daemon, path)
    return {
        "idle_rss_mib": round(base / 1024, 1),
        "rows": rows,
        "slope_kib_per_connection": round(slope([(r["connections"], r["rss_mib"] * 1024) for r in rows]), 2),
        "slope_ping_p99_us_per_1000": round(slope([(r["connections"] / 1000, r["ping_ms_p50_p99"][1] * 1000)
                                                   for r in rows]), 1),
        "slope_idle_cpu_pct_per_1000": round(slope([(r["connections"] / 1000, r["idle_cpu_pct"]) for r in rows]), 3),
    }


# -- devices --------------------------------------------------------------------------------------

async def devices(sizes: list[int], quick: bool) -> dict[str, Any]:
    rows = []
    for n in sizes:
        text = generated_config(n)
        readies = []
        for _ in range(1 if quick else 3):
            daemon, path = await started(text)
            readies.append(daemon.ready_s * 1000)
            await stopped(daemon, path)
        daemon, path = await started(text)
        try:
            status = await round_trips(daemon.url, STATUS, 50 if quick else 300)
            cpu = await idle_cpu(daemon, 2 if quick else 20)
            rss = daemon.rss_kib()
        finally:
            await stopped(daemon, path)
        poll_ms = await poll_cycle(text, 5 if quick else 30)
        units = -(-(n - min(max(1, n // 4), len(GPIO_PAIRS))) // COILS_PER_UNIT)
        rows.append({"devices": n, "modbus_units": units, "ready_ms": round(statistics.median(readies), 1),
                     "rss_mib": round(rss / 1024, 1), "idle_cpu_pct": round(cpu, 2),
                     "status_ms_p50_p99": p50_p99(status), "poll_cycle_ms": poll_ms})
        print(f"  devices {rows[-1]}", file=sys.stderr, flush=True)
    return {
        "rows": rows,
        "slope_ready_ms_per_device": round(slope([(r["devices"], r["ready_ms"]) for r in rows]), 3),
        "slope_idle_cpu_pct_per_device": round(slope([(r["devices"], r["idle_cpu_pct"]) for r in rows]), 4),
        "slope_status_us_per_device": round(slope([(r["devices"], r["status_ms_p50_p99"][0] * 1000) for r in rows]), 2),
        "slope_rss_kib_per_device": round(slope([(r["devices"], r["rss_mib"] * 1024) for r in rows]), 1),
        "slope_poll_ms_per_unit": round(slope([(r["modbus_units"], r["poll_cycle_ms"]) for r in rows
                                               if r["poll_cycle_ms"] is not None]), 3),
    }


async def poll_cycle(text: str, cycles: int) -> float | None:
    """Median time of one poll of every point on the Modbus link, in process on the simulated plant
    (the daemon's own polling loop runs beside it, as it would)."""
    from controller.service import configfile
    from controller.service.daemon import Daemon as InProcess
    from drivers.modbus import ModbusLink

    path = write(text)
    daemon = InProcess(configfile.load(str(path)), simulate=True, host="127.0.0.1", port=0)
    await daemon.start()
    try:
        links = [b for b in daemon.buses if isinstance(b, ModbusLink)]
        if not links:
            return None
        times = []
        for _ in range(cycles):
            t = time.perf_counter()
            await links[0].poll()
            times.append((time.perf_counter() - t) * 1000)
        return round(statistics.median(times), 2)
    finally:
        await daemon.stop()
        path.unlink()


# -- events ---------------------------------------------------------------------------------------

SUBSCRIBER = r"""
# N subscribers to "*" as raw TCP connections: the handshake and the subscribe request by hand,
# then every byte counted at C speed (events by their notification's opening, split reads kept
# apart by a tail), pings answered. A websockets client parses each frame in Python (about 10 us):
# 1,000 of them could not keep up with what the daemon sends, and the curve would measure them.
import asyncio, base64, json, os, sys

EVENT = b'"method":"event"'
PING = b"\x89\x04"  # the server's keepalive ping: 4 bytes of payload (websockets' own)

def frame(opcode, payload):
    mask = os.urandom(4)
    head = bytes([0x80 | opcode]) + (bytes([0x80 | len(payload)]) if len(payload) < 126
                                     else bytes([0xFE]) + len(payload).to_bytes(2, "big"))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

SUB = frame(1, json.dumps({"jsonrpc": "2.0", "id": 0, "method": "events.subscribe",
                           "params": {"topics": ["*"]}}).encode())

class Subscriber(asyncio.Protocol):
    def __init__(self, host, ready):
        self.host, self.ready = host, ready
        self.head, self.open, self.closed, self.count = b"", False, False, 0
        self.tail_event, self.tail_ping = b"", b""

    def connection_made(self, transport):
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write((f"GET /ws HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                         "Authorization: Bearer demo-admin\r\n\r\n").encode())

    def data_received(self, data):
        if not self.open:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            if b" 101 " not in self.head[:end]:
                raise SystemExit(f"handshake refused: {self.head[:end]!r}")
            self.open, data = True, self.head[end + 4:]
            self.transport.write(SUB)
            self.ready.set_result(None)
        chunk = self.tail_event + data
        self.count += chunk.count(EVENT)
        self.tail_event = chunk[-(len(EVENT) - 1):]
        chunk = self.tail_ping + data
        at = chunk.find(PING)
        while 0 <= at <= len(chunk) - 6:
            self.transport.write(frame(0xA, chunk[at + 2:at + 6]))
            at = chunk.find(PING, at + 6)
        self.tail_ping = chunk[-5:]

    def connection_lost(self, exc):
        self.closed = True

async def main(url, n):
    host = url.split("/")[2]
    address, port = host.rsplit(":", 1)
    loop = asyncio.get_running_loop()
    subs = []
    while len(subs) < n:
        wave = []
        for _ in range(min(100, n - len(subs))):
            ready = loop.create_future()
            _, sub = await loop.create_connection(lambda r=ready: Subscriber(host, r), address, int(port))
            wave.append(sub)
        await asyncio.wait_for(asyncio.gather(*(s.ready for s in wave)), 60)
        subs += wave
    await asyncio.sleep(0.5)  # the subscribe replies
    print("ready", flush=True)
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        print(json.dumps({"events": sum(s.count for s in subs), "closed": sum(s.closed for s in subs)}), flush=True)
    for s in subs:
        s.transport.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


class Subscribers:
    """N subscribers to '*' in a child process; ``count()`` asks it how many events arrived."""

    def __init__(self, url: str, n: int) -> None:
        self.n = n
        self.proc = subprocess.Popen([sys.executable, "-c", SUBSCRIBER, url, str(n)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"subscribers did not start: {line!r}")

    def count(self) -> dict[str, int]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("?\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(60)


@dataclass
class Curve:
    """One code's daemon with its subscribers, the rows measured so far, and why it stopped."""

    daemon: Daemon
    path: Path
    subs: Subscribers | None = None
    probe: Probe | None = None
    driver: ClientConnection | None = None
    idle: list[float] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False
    collections: list[tuple[float, int, float]] = field(default_factory=list)  # (when, generation, ms)

    def served(self) -> list[int]:
        """The daemon and the probe: what the measurement is about."""
        assert self.daemon.proc is not None and self.probe is not None
        return [self.daemon.proc.pid, self.probe.proc.pid]

    def load(self) -> list[int]:
        """The subscribers' process: panels on other machines in a real building."""
        assert self.subs is not None
        return [self.subs.proc.pid]


@dataclass
class Paired:
    """The p99 check: idle against *rate* events/s at *at* subscribers, in alternating blocks,
    under each isolation mode; the curve after it runs under *curve_mode*."""

    at: int
    modes: list[str]
    curve_mode: str
    rate: int = PAIRED_RATE
    blocks: int = 3  # per condition
    block_s: float = 5.0


async def events(subscriber_counts: list[int], rates: list[int], seconds: float, switches: int,
                 codes: dict[str, list[str] | None], paired: Paired) -> dict[str, Any]:
    """For each code (this tree's, and a baseline's), a daemon with *n* subscribers; at
    ``paired.at`` subscribers first the p99 check (:func:`p99_check`); then the rates are measured
    on each in turn, side by side, each curve until its replies slow or its subscribers fall
    behind."""
    out: dict[str, Any] = {code: {} for code in codes}
    checked: dict[str, Any] = {}
    for n in subscriber_counts:
        curves: dict[str, Curve] = {}
        try:
            for code, launcher in codes.items():
                collections: list[tuple[float, int, float]] = []
                curve = curves[code] = Curve(*await started(outputs_config(switches), gc_logged(launcher),
                                                            collected(collections)), collections=collections)
                curve.subs = await asyncio.to_thread(Subscribers, curve.daemon.url, n)
                curve.probe = await asyncio.to_thread(Probe, curve.daemon.url)
                curve.idle = await asyncio.to_thread(curve.probe.run, min(5.0, 2 * seconds))  # subscribers, no events
                curve.driver = await connect(curve.daemon.url, additional_headers=ADMIN, compression=None)
            if n == paired.at:
                checked[str(n)] = await p99_check(curves, paired, switches)
            isolate(paired.curve_mode, curves)
            for rate in rates:
                for code, curve in curves.items():
                    if curve.done:
                        continue
                    assert curve.subs is not None and curve.driver is not None and curve.probe is not None
                    row, _ = await event_round(curve.daemon, curve.driver, curve.subs, curve.probe, rate, seconds,
                                               switches)
                    curve.rows.append(row)
                    print(f"  events to {n}, {code}: {row}", file=sys.stderr, flush=True)
                    slow = row["ping_ms_p90"] > SLOW_P90_MS
                    short = row["delivered_per_sub_per_s"] < 0.8 * row["published_per_s"]
                    if slow or short or row["subscribers_cut_off"]:
                        row["limit"] = "pings slowed" if slow else "subscribers fell behind" if short else "cut off"
                        curve.done = True
        finally:
            isolate("none", {code: c for code, c in curves.items() if c.probe is not None and c.subs is not None})
            for curve in curves.values():
                if curve.driver is not None:
                    await curve.driver.close()
                if curve.subs is not None:
                    await asyncio.to_thread(curve.subs.close)
                if curve.probe is not None:
                    await asyncio.to_thread(curve.probe.close)
                await stopped(curve.daemon, curve.path)
        for code, curve in curves.items():
            out[code][str(n)] = summary(curve, n)
    return {"curves": out, "p99_check": checked}


def summary(curve: Curve, n: int) -> dict[str, Any]:
    rows = curve.rows
    sustained = [r for r in rows if "limit" not in r]
    at_100 = next((r for r in rows if r["target_per_s"] == 100), None)
    return {
        "idle_ping_ms_p50_p99": p50_p99(curve.idle),
        "rows": rows,
        "max_sustained_events_per_s": sustained[-1]["published_per_s"] if sustained else None,
        "replies_slow_at_events_per_s": next((r["published_per_s"] for r in rows
                                               if r.get("limit") == "pings slowed"), None),
        "ping_p99_at_100_per_s_minus_idle_ms": round(at_100["ping_ms_p50_p99"][1] - pct(curve.idle, 0.99), 3)
        if at_100 else None,
        # daemon CPU per frame it sends (an event times its subscribers)
        "slope_cpu_us_per_frame": round(slope([(r["published_per_s"] * n, r["daemon_cpu_pct"] * 1e4)
                                               for r in rows]), 3) if len(rows) > 1 else None,
    }


PROBE = r"""
# system.ping every 10 ms on a connection of its own, in a process of its own (the toggles' driver
# would otherwise delay the probe's own reads): "run SECONDS" on stdin, the round trips (ms) back.
import asyncio, json, sys, time
from websockets.asyncio.client import connect

async def main(url):
    async with connect(url, additional_headers={"Authorization": "Bearer demo-admin"}, compression=None) as ws:
        loop = asyncio.get_running_loop()
        print("ready", flush=True)
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            stop, out = time.monotonic() + float(line.split()[1]), []
            while time.monotonic() < stop:
                t = time.perf_counter()
                await ws.send('{"jsonrpc":"2.0","id":1,"method":"system.ping"}')
                await ws.recv()
                out.append((time.perf_counter() - t) * 1000)
                await asyncio.sleep(0.01)  # a probe, not a load of its own
            print(json.dumps(out), flush=True)

asyncio.run(main(sys.argv[1]))
"""


class Probe:
    """The ping probe in a child process; ``run(seconds)`` pings for that long, returns the round trips."""

    def __init__(self, url: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", PROBE, url], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the probe did not start")

    def run(self, seconds: float) -> list[float]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"run {seconds}\n")
        self.proc.stdin.flush()
        return [float(x) for x in json.loads(self.proc.stdout.readline())]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


async def event_round(daemon: Daemon, driver: ClientConnection, subs: Subscribers, probe: Probe, rate: int,
                      seconds: float, switches: int) -> tuple[dict[str, Any], list[float]]:
    """Toggle the switches round-robin at *rate* toggles per second (each toggle is one state
    event) for *seconds*, pinging on the probe's connection meanwhile."""
    before = await asyncio.to_thread(subs.count)
    seq0 = await seq(daemon.url)
    c0 = daemon.cpu_s()
    t0 = time.monotonic()
    stop = t0 + seconds
    pinging = asyncio.ensure_future(asyncio.to_thread(probe.run, seconds))

    burst = 0  # the most toggles sent in one go: a driver kept from its clock catches up in bursts

    async def drive() -> None:
        nonlocal burst
        sent = 0
        replies = 0

        async def drain() -> None:
            nonlocal replies
            while replies < sent:
                await driver.recv()
                replies += 1

        reader = asyncio.create_task(asyncio.sleep(0))
        while (now := time.monotonic()) < stop:
            due = int((now - t0) * rate)
            burst = max(burst, due - sent)
            for _ in range(due - sent):
                await driver.send(json.dumps({"jsonrpc": "2.0", "id": sent, "method": f"o{sent % switches}.toggle"}))
                sent += 1
            if reader.done():
                reader = asyncio.create_task(drain())
            await asyncio.sleep(0.002)  # pacing the toggles: this is the load generator's clock
        await reader
        await drain()

    await drive()
    pings = await pinging
    elapsed = time.monotonic() - t0
    cpu = (daemon.cpu_s() - c0) / elapsed * 100
    published = (await seq(daemon.url) - seq0) / elapsed
    after = await asyncio.to_thread(subs.count)
    return {"target_per_s": rate, "published_per_s": round(published, 1),
            "delivered_per_sub_per_s": round((after["events"] - before["events"]) / subs.n / elapsed, 1),
            "daemon_cpu_pct": round(cpu, 1), "ping_ms_p50_p99": p50_p99(pings),
            "ping_ms_p90": round(pct(pings, 0.9), 3), "subscribers_cut_off": after["closed"] - before["closed"],
            "largest_burst": burst}, pings


async def seq(url: str) -> int:
    async with connect(url, additional_headers=ADMIN, compression=None, max_size=None) as ws:
        await ws.send(STATUS)
        return int(json.loads(await ws.recv())["result"]["seq"])


# -- the p99 check: idle against loaded, with the bench's own load kept off the daemon -------------

ISOLATION = ("none", "affinity", "nice", "idle")
CPUS = sorted(os.sched_getaffinity(0))
BASE_NICE = os.getpriority(os.PRIO_PROCESS, 0)
LOAD_NICE = 19  # the weakest nice
# The daemon's garbage collections, timed in the daemon by a gc callback and written to its stderr
# (os.write: no Python-level buffer a collection could interrupt) when they take 1 ms or more.
GC_HOOK = """import gc, os, time
_gc_t0 = [0.0]
def _gc_timed(phase, info):
    if phase == "start":
        _gc_t0[0] = time.perf_counter()
    elif (ms := (time.perf_counter() - _gc_t0[0]) * 1000) >= 1:
        os.write(2, f"bench-gc {info['generation']} {ms:.3f}\\n".encode())
gc.callbacks.append(_gc_timed)
"""


def gc_logged(launcher: list[str] | None) -> list[str]:
    """*launcher* (None: this tree's pictl) with :data:`GC_HOOK` run first."""
    python, flag, code = launcher or [sys.executable, "-c", "import sys; from controller.service.cli import main; "
                                      "sys.exit(main())"]
    assert flag == "-c", launcher
    return [python, "-c", GC_HOOK + code]


def collected(into: list[tuple[float, int, float]]) -> Callable[[str], None]:
    def on_line(line: str) -> None:
        if line.startswith("bench-gc "):
            _, generation, ms = line.split()
            into.append((time.monotonic(), int(generation), float(ms)))
    return on_line


def place(pid: int, cpus: list[int], nice: int = BASE_NICE, policy: int = os.SCHED_OTHER) -> None:
    """Every thread of *pid* on *cpus*, at *nice*, under *policy* (all three are per thread in Linux)."""
    for tid in (int(t) for t in os.listdir(f"/proc/{pid}/task")):
        try:
            os.sched_setscheduler(tid, policy, os.sched_param(0))
            os.setpriority(os.PRIO_PROCESS, tid, nice)
            os.sched_setaffinity(tid, cpus)
        except ProcessLookupError:
            pass  # a thread that ended meanwhile


def isolate(mode: str, curves: dict[str, Curve]) -> None:
    """Keep the bench's own load (every curve's subscribers) off the daemons and the probes, by
    *mode* (the toggles' driver, this process, is left where it is: see the module's docstring):

    - "affinity": the load pinned to the second half of the cores, the daemons and probes to the first;
    - "nice": the load at nice 19 (a weight of 15 against the daemon's 1,024);
    - "idle": the load under SCHED_IDLE: it runs on what nothing else wants, and a waking task of
      any other policy preempts it at once (the scheduler's rule for idle tasks; a nice 19 task
      has a small share, but a waking task still waits for the fair scheduler to preempt it);
    - "none": as started.

    Going back to "none" from "nice" or "idle" needs root (or CAP_SYS_NICE)."""
    split = mode == "affinity" and len(CPUS) > 1
    half = len(CPUS) // 2
    for curve in curves.values():
        for pid in curve.served():
            place(pid, CPUS[:half] if split else CPUS)
        for pid in curve.load():
            place(pid, CPUS[half:] if split else CPUS, LOAD_NICE if mode == "nice" else BASE_NICE,
                  os.SCHED_IDLE if mode == "idle" else os.SCHED_OTHER)


def waited_s(pid: int) -> float:
    """How long *pid*'s main thread has waited, runnable, for a core (schedstat's second field)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[1]) / 1e9


async def p99_check(curves: dict[str, Curve], paired: Paired, switches: int) -> dict[str, Any]:
    """Each isolation mode in turn, and under it each code in turn: blocks idle and at
    ``paired.rate`` events/s alternating (idle first, then loaded first, ...), pooled per condition."""
    out: dict[str, Any] = {code: {} for code in curves}
    for mode in paired.modes:
        isolate(mode, curves)
        for code, curve in curves.items():
            out[code][mode] = result = await paired_blocks(curve, paired, switches)
            print(f"  p99 check, {code}, isolation {mode}: {result}", file=sys.stderr, flush=True)
    return out


async def paired_blocks(curve: Curve, paired: Paired, switches: int) -> dict[str, Any]:
    assert curve.subs is not None and curve.driver is not None and curve.probe is not None
    daemon_pid, probe_pid = curve.served()
    pings: dict[str, list[float]] = {"idle": [], "loaded": []}
    blocks: dict[str, list[float]] = {"idle": [], "loaded": []}  # each block's p99
    waits: dict[str, list[float]] = {k: [0.0, 0.0, 0.0] for k in pings}  # daemon, probe, seconds
    gcs: dict[str, list[tuple[int, float]]] = {"idle": [], "loaded": []}  # collections of 1 ms or more
    rows = []
    for i in range(paired.blocks):
        for condition in ("idle", "loaded") if i % 2 == 0 else ("loaded", "idle"):
            d0, p0, t0 = waited_s(daemon_pid), waited_s(probe_pid), time.monotonic()
            if condition == "idle":
                got = await asyncio.to_thread(curve.probe.run, paired.block_s)
            else:
                row, got = await event_round(curve.daemon, curve.driver, curve.subs, curve.probe, paired.rate,
                                             paired.block_s, switches)
                rows.append(row)
            t1 = time.monotonic()
            w = waits[condition]
            w[0] += waited_s(daemon_pid) - d0
            w[1] += waited_s(probe_pid) - p0
            w[2] += t1 - t0
            pings[condition] += got
            blocks[condition].append(round(pct(got, 0.99), 2))
            gcs[condition] += [(generation, ms) for when, generation, ms in curve.collections if t0 <= when < t1]
    idle_p99, loaded_p99 = pct(pings["idle"], 0.99), pct(pings["loaded"], 0.99)
    return {
        "pings": {k: len(v) for k, v in pings.items()},
        "idle_ms_p50_p99": p50_p99(pings["idle"]),
        "loaded_ms_p50_p99": p50_p99(pings["loaded"]),
        "loaded_ms_p90": round(pct(pings["loaded"], 0.9), 3),
        "p99_delta_ms": round(loaded_p99 - idle_p99, 3),
        "p99_ratio": round(loaded_p99 / idle_p99, 2),
        "block_p99s_ms": blocks,
        # ms per second that the daemon's and the probe's main threads waited, runnable, for a core
        "daemon_waited_ms_per_s": {k: round(v[0] / v[2] * 1000, 2) for k, v in waits.items()},
        "probe_waited_ms_per_s": {k: round(v[1] / v[2] * 1000, 2) for k, v in waits.items()},
        # per generation: how many took 1 ms or more, the longest, and their sum (ms)
        "gc_1ms_or_more": {k: {g: [len(ms), round(max(ms), 1), round(sum(ms), 1)]
                               for g in range(3) if (ms := [m for gen, m in v if gen == g])} for k, v in gcs.items()},
        "published_per_s": round(statistics.mean(r["published_per_s"] for r in rows), 1),
        "delivered_per_sub_per_s": round(statistics.mean(r["delivered_per_sub_per_s"] for r in rows), 1),
        "daemon_cpu_pct": round(statistics.mean(r["daemon_cpu_pct"] for r in rows), 1),
        "subscribers_cut_off": sum(r["subscribers_cut_off"] for r in rows),
        "largest_burst": max(r["largest_burst"] for r in rows),
        "load_average": os.getloadavg()[0],
    }


# -- charts ---------------------------------------------------------------------------------------

def charts(result: dict[str, Any], into: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    if "connections" in result:
        made.append(connections_chart(plt, result["connections"]["rows"], into))
    if "devices" in result:
        made.append(devices_chart(plt, result["devices"]["rows"], into))
    if "events" in result:
        made.append(events_chart(plt, result["events"], into))
    return made


def connections_chart(plt: Any, conn: list[dict[str, Any]], into: Path) -> Path:
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    xs = [r["connections"] for r in conn]
    a.plot(xs, [r["rss_mib"] for r in conn], "o-")
    a.axhline(120, color="grey", ls="--", lw=1, label="goal: 5,000 under 120 MB")
    a.set(xlabel="idle connections", ylabel="RSS, MiB", title="Memory with idle connections")
    a.legend(fontsize=8)
    b.plot(xs, [r["ping_ms_p50_p99"][1] for r in conn], "o-", label="p99")
    b.plot(xs, [r["ping_ms_p50_p99"][0] for r in conn], "o-", label="p50")
    b.set(xlabel="idle connections", ylabel="system.ping, ms", title="Ping with them open")
    b.legend(fontsize=8)
    return save(fig, into / "scale-connections.png")


def devices_chart(plt: Any, dev: list[dict[str, Any]], into: Path) -> Path:
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    xs = [r["devices"] for r in dev]
    axes[0].plot(xs, [r["ready_ms"] for r in dev], "o-")
    axes[0].axhline(1000, color="grey", ls="--", lw=1, label="goal: 200 under 1 s")
    axes[0].set(xlabel="devices", ylabel="ms", title="Start to ready")
    axes[0].legend(fontsize=8)
    axes[1].plot(xs, [r["idle_cpu_pct"] for r in dev], "o-")
    axes[1].axhline(2, color="grey", ls="--", lw=1, label="goal: under 2%")
    axes[1].set(xlabel="devices", ylabel="% of a core", title="Idle CPU (plant included)")
    axes[1].legend(fontsize=8)
    axes[2].plot(xs, [r["status_ms_p50_p99"][0] for r in dev], "o-", label="system.status p50")
    axes[2].plot(xs, [r["poll_cycle_ms"] or 0 for r in dev], "s-", label="Modbus poll cycle")
    axes[2].set(xlabel="devices", ylabel="ms", title="Status and poll time")
    axes[2].legend(fontsize=8)
    return save(fig, into / "scale-devices.png")


def events_chart(plt: Any, events: dict[str, Any], into: Path) -> Path:
    """Each code's curves (this tree's, and the baseline's when measured), one line per subscriber
    count; and the p99 check: idle and loaded p99 per code and isolation mode."""
    curves, checked = events["curves"], events["p99_check"]
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(16, 4.4))
    for code, per_n in curves.items():
        style = "--" if code != "now" else "-"
        for n, curve in per_n.items():
            if not isinstance(curve, dict):
                continue  # the fitted slope beside the curves
            rows = curve["rows"]
            xs = [r["published_per_s"] for r in rows]
            line = a.plot(xs, [r["ping_ms_p90"] for r in rows], "o" + style, label=f"{code}: {n} subscribers, p90")
            a.plot(xs, [r["ping_ms_p50_p99"][1] for r in rows], "x:", color=line[0].get_color(), lw=0.8)
            b.plot(xs, [r["daemon_cpu_pct"] for r in rows], "o" + style, color=line[0].get_color(),
                   label=f"{code}: {n} subscribers")
    a.axhline(SLOW_P90_MS, color="grey", ls="--", lw=1, label="'replies slow': p90 10 ms")
    a.set(xlabel="events published per second", ylabel="system.ping, ms (x: p99)", title="Replies under event load",
          xscale="log", yscale="log")
    b.set(xlabel="events published per second", ylabel="% of a core", title="Daemon CPU", xscale="log")
    a.legend(fontsize=7)
    b.legend(fontsize=7)
    for n, per_code in checked.items():
        modes = list(next(iter(per_code.values())))
        width = 0.8 / (2 * len(per_code))
        for i, (code, per_mode) in enumerate(per_code.items()):
            for j, condition in enumerate(("idle", "loaded")):
                at = [m + (2 * i + j - len(per_code) + 0.5) * width for m in range(len(modes))]
                c.bar(at, [per_mode[m][f"{condition}_ms_p50_p99"][1] for m in modes], width,
                      label=f"{code}: {condition}", color="tab:blue" if code == "now" else "tab:red",
                      alpha=0.4 + 0.6 * j)
        c.set_xticks(range(len(modes)), [f"load: {m}" for m in modes])
        c.set(ylabel="system.ping p99, ms", title=f"p99 idle and at {PAIRED_RATE} events/s, {n} subscribers")
        c.legend(fontsize=7)
    return save(fig, into / "scale-events.png")


def save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, no charts: checks that it runs")
    ap.add_argument("--only", choices=["connections", "devices", "events"], action="append")
    ap.add_argument("--charts", type=Path, default=None, help="directory for the PNGs (full runs: docs/)")
    ap.add_argument("--baseline", default=BASELINE, help="git revision whose events curve is drawn beside this "
                    f"tree's (default {BASELINE}: the fan-out before it wrote in turns); '' for none")
    ap.add_argument("--subscribers", type=int, nargs="+", help="the events curve's subscriber counts")
    ap.add_argument("--rates", type=int, nargs="+", help="the events curve's rates (events/s)")
    ap.add_argument("--isolate", choices=ISOLATION, nargs="+", default=None,
                    help="the p99 check's ways of keeping the bench's load off the daemon, each measured in turn "
                    "(default: all four)")
    ap.add_argument("--curve-isolation", choices=ISOLATION, default=None,
                    help="the isolation the curve runs under (default: the last of --isolate)")
    ap.add_argument("--blocks", type=int, default=None, help="the p99 check's blocks per condition (default 3)")
    ap.add_argument("--block-seconds", type=float, default=None, help="each block's length (default 5 s)")
    args = ap.parse_args()
    q = args.quick
    raise_fd_limit()
    only = set(args.only or ["connections", "devices", "events"])
    result: dict[str, Any] = {"machine": f"{os.cpu_count()} cores, {platform.machine()}, Python "
                              f"{platform.python_version()}, load {os.getloadavg()}"}
    if "connections" in only:
        result["connections"] = await connections([20, 100] if q else [100, 1000, 5000], q)
    if "devices" in only:
        result["devices"] = await devices([4, 20] if q else [4, 50, 200], q)
    if "events" in only:
        sizes = ([10, 50], [50, 200], 0.5) if q else ([100, 1000], [5, 10, 25, 50, 100, 200, 400, 800, 1600, 3200],
                                                      4.0)
        sizes = (args.subscribers or sizes[0], args.rates or sizes[1], sizes[2])
        with tempfile.TemporaryDirectory() as tmp:
            tree = unpack(args.baseline, Path(tmp) / "baseline") if args.baseline and not q else None
            codes: dict[str, list[str] | None] = {"now": None}
            if tree is not None:
                codes[f"before ({args.baseline})"] = tree_launcher(tree)
            modes = args.isolate or list(ISOLATION if not q else ("none", "idle"))
            curve_mode = args.curve_isolation or modes[-1]
            if os.geteuid() != 0 and (renice := {m for m in [*modes, curve_mode] if m in ("nice", "idle")}):
                print(f"  not root: {sorted(renice)} left out (could not be undone between modes)", file=sys.stderr)
                modes = [m for m in modes if m not in renice] or ["none"]
                curve_mode = "none" if curve_mode in renice else curve_mode
            paired = Paired(at=max(sizes[0]), modes=modes, curve_mode=curve_mode, blocks=args.blocks or (1 if q else 3),
                            block_s=args.block_seconds or (0.5 if q else 5.0))
            result["events"] = await events(*sizes, 12, codes, paired)
    result["load after"] = os.getloadavg()
    print(json.dumps(result, indent=1))
    into = args.charts if args.charts is not None else (None if q else ROOT / "docs")
    if into is not None:
        for path in charts(result, into):
            print(f"chart: {path}", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
