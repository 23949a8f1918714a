"""pictl's benchmarks, side by side with the bare websockets library, in one run.

    .venv/bin/python bench/run.py            # full run (a few minutes), prints the table
    .venv/bin/python bench/run.py --quick    # seconds: checks the benchmarks still work (CI runs it)

The daemon (``pictl serve --simulate`` on config/demo.toml) and the baseline
(bench/baseline_server.py) run as child processes; this process is the
client. Every figure is the median of repeated rounds with its [min-max]
spread; wherever a baseline exists the rounds alternate between the two and
the ratio is taken per round. Absolute times depend on the machine (printed
first); ratios are what to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
PICTL = str(Path(sys.executable).parent / "pictl")
ADMIN = {"Authorization": "Bearer demo-admin"}
PING = '{"jsonrpc":"2.0","id":1,"method":"system.ping"}'
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Server:
    proc: asyncio.subprocess.Process
    url: str
    started_s: float  # from spawn to its "serving" line

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE // 1024

    def cpu_s(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime

    async def stop(self) -> None:
        self.proc.terminate()
        await self.proc.wait()


async def spawn(*argv: str) -> Server:
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(*argv, stderr=asyncio.subprocess.PIPE, cwd=ROOT)
    assert proc.stderr is not None
    while True:
        line = (await proc.stderr.readline()).decode()
        if not line:
            raise RuntimeError(f"{argv[0]} exited before serving")
        match = re.search(r"serving (wss?://\S+)", line)
        if match:
            drain = asyncio.get_running_loop().create_task(proc.stderr.read())  # keep reading its log
            DRAINS.add(drain)
            return Server(proc, match.group(1), time.perf_counter() - t0)


DRAINS: set[asyncio.Task[bytes]] = set()


def bench_config() -> str:
    """The demo config, with connection limits raised for 1,000 clients from one address."""
    text = (ROOT / "config" / "demo.toml").read_text()
    text = text.replace("[server]\n", "[server]\nmax_connections = 5000\nmax_connections_per_address = 5000\n", 1)
    fd, path = tempfile.mkstemp(prefix="pictl-bench-", suffix=".toml")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


CONFIG = bench_config()


def pictl() -> Awaitable[Server]:
    return spawn(PICTL, "serve", "--config", CONFIG, "--simulate", "--listen", "127.0.0.1:0")


def baseline() -> Awaitable[Server]:
    return spawn(sys.executable, str(ROOT / "bench" / "baseline_server.py"))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str]] = []

    def add(self, what: str, ours: str, base: str = "", ratio: str = "") -> None:
        self.rows.append((what, ours, base, ratio))
        print(f"  {what}: pictl {ours}" + (f" | bare {base}" if base else "") + (f" | ratio {ratio}" if ratio else ""),
              file=sys.stderr, flush=True)

    def render(self) -> str:
        head = ("measure", "pictl", "bare websockets", "pictl / bare")
        widths = [max(len(r[i]) for r in [head, *self.rows]) for i in range(4)]

        def line(row: tuple[str, ...]) -> str:
            return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

        return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                          *(line(r) for r in self.rows)])


async def ping_loop(url: str, headers: dict[str, str] | None, calls: int) -> list[float]:
    out = []
    async with connect(url, additional_headers=headers, compression=None) as ws:
        for _ in range(calls):
            t = time.perf_counter()
            await ws.send(PING)
            await ws.recv()
            out.append((time.perf_counter() - t) * 1e6)
    return out


async def alternate(rounds: int, ours: Callable[[], Awaitable[float]],
                    base: Callable[[], Awaitable[float]]) -> tuple[list[float], list[float], list[float]]:
    a, b = [], []
    for _ in range(rounds):
        a.append(await ours())
        b.append(await base())
    return a, b, [x / y for x, y in zip(a, b, strict=True)]


# -- sections ------------------------------------------------------------------------------------

async def round_trip(t: Table, us: Server, bare: Server, rounds: int, calls: int) -> None:
    await ping_loop(us.url, ADMIN, 200)  # warm both up
    await ping_loop(bare.url, None, 200)
    p99: dict[str, list[float]] = {"ours": [], "base": []}

    async def ours() -> float:
        v = await ping_loop(us.url, ADMIN, calls)
        p99["ours"].append(pct(v, 0.99))
        return pct(v, 0.5)

    async def base() -> float:
        v = await ping_loop(bare.url, None, calls)
        p99["base"].append(pct(v, 0.99))
        return pct(v, 0.5)

    a, b, r = await alternate(rounds, ours, base)
    t.add(f"system.ping round trip p50, us ({rounds} x {calls} calls)", spread(a, "{:.0f}"), spread(b, "{:.0f}"),
          spread(r))
    r99 = [x / y for x, y in zip(p99["ours"], p99["base"], strict=True)]
    t.add("system.ping round trip p99, us", spread(p99["ours"], "{:.0f}"), spread(p99["base"], "{:.0f}"),
          spread(r99))


async def throughput(t: Table, us: Server, bare: Server, rounds: int, seconds: float) -> None:
    async def rate(url: str, headers: dict[str, str] | None, clients: int) -> float:
        links = await open_links(url, headers, clients)
        done = 0
        stop = time.perf_counter() + seconds

        async def worker(ws: Any) -> None:
            nonlocal done
            while time.perf_counter() < stop:
                await ws.send(PING)
                await ws.recv()
                done += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(ws) for ws in links))
        elapsed = time.perf_counter() - t0
        await asyncio.gather(*(ws.close() for ws in links))
        return done / elapsed

    for clients in (1, 20, 100):
        a, b, r = await alternate(rounds, lambda c=clients: rate(us.url, ADMIN, c),
                                  lambda c=clients: rate(bare.url, None, c))
        t.add(f"throughput, calls/s, {clients} client(s)", spread(a, "{:.0f}"), spread(b, "{:.0f}"), spread(r))


async def confirmation(t: Table, us: Server, actions: int) -> None:
    """From the simulated contact moving (the plant's own monotonic stamp; CLOCK_MONOTONIC is
    system-wide, so it compares with ours) to this client holding the confirmed result."""
    overhead = []
    async with connect(us.url, additional_headers=ADMIN, compression=None) as ws:
        for i in range(actions):
            action = "open" if i % 2 == 0 else "close"
            await ws.send(json.dumps({"jsonrpc": "2.0", "id": i, "method": f"door.{action}"}))
            reply = json.loads(await ws.recv())
            held = time.monotonic()
            assert reply["result"]["changed"], reply
            await ws.send(json.dumps({"jsonrpc": "2.0", "id": "t", "method": "sim.timeline",
                                      "params": {"device": "door"}}))
            moved = json.loads(await ws.recv())["result"]["moved_at"][-1]
            overhead.append((held - moved) * 1000)
    t.add(f"confirmation overhead, ms, p50 ({actions} door moves)", f"{pct(overhead, 0.5):.2f}")
    t.add("confirmation overhead, ms, p99", f"{pct(overhead, 0.99):.2f}")


async def open_links(url: str, headers: dict[str, str] | None, n: int) -> list[Any]:
    links: list[Any] = []
    while len(links) < n:  # in waves: the listen backlog is finite
        wave = min(50, n - len(links))
        links.extend(await asyncio.gather(*(connect(url, additional_headers=headers, compression=None,
                                                    open_timeout=30) for _ in range(wave))))
    return links


async def fanout(t: Table, us: Server, bare: Server, rounds: int, sizes: list[int]) -> None:
    """One state change to N subscribers: from the trigger leaving us to the last subscriber holding it.
    The trigger is light.toggle, whose first event (the output moving) is published as the request is
    handled; the baseline broadcasts as soon as its trigger arrives."""
    async with connect(us.url, additional_headers=ADMIN, compression=None) as admin, \
            connect(bare.url, compression=None) as poke:
        for n in sizes:
            ours = await open_links(us.url, ADMIN, n)
            sub = json.dumps({"jsonrpc": "2.0", "id": 0, "method": "events.subscribe",
                              "params": {"topics": ["light.state"]}})
            await asyncio.gather(*(ws.send(sub) for ws in ours))
            await asyncio.gather(*(ws.recv() for ws in ours))
            theirs = await open_links(bare.url, None, n)

            async def ours_once(ours: list[Any] = ours) -> float:
                t0 = time.perf_counter()
                await admin.send('{"jsonrpc":"2.0","id":1,"method":"light.toggle"}')
                await asyncio.gather(*(ws.recv() for ws in ours))
                elapsed = (time.perf_counter() - t0) * 1000
                await asyncio.gather(*(ws.recv() for ws in ours))  # the feedback's event follows
                await admin.recv()
                return elapsed

            async def base_once(theirs: list[Any] = theirs) -> float:
                t0 = time.perf_counter()
                await poke.send("go")
                await asyncio.gather(*(ws.recv() for ws in [*theirs, poke]))
                return (time.perf_counter() - t0) * 1000

            a, b, r = await alternate(rounds, ours_once, base_once)
            t.add(f"event fan-out to {n} subscribers, ms", spread(a), spread(b), spread(r))
            await asyncio.gather(*(ws.close() for ws in ours + theirs))


async def memory(t: Table, us: Server, bare: Server, idle_links: int) -> None:
    before = (us.rss_kib(), bare.rss_kib())
    t.add("RSS idle, MiB", f"{before[0] / 1024:.1f}", f"{before[1] / 1024:.1f}", f"{before[0] / before[1]:.2f}")
    ours = await open_links(us.url, ADMIN, idle_links)
    theirs = await open_links(bare.url, None, idle_links)
    await ping_loop(us.url, ADMIN, 10)  # let both settle after the handshakes
    await ping_loop(bare.url, None, 10)
    after = (us.rss_kib(), bare.rss_kib())
    t.add(f"RSS with {idle_links} idle connections, MiB", f"{after[0] / 1024:.1f}", f"{after[1] / 1024:.1f}")
    per = [(after[i] - before[i]) / idle_links for i in (0, 1)]
    t.add("memory per idle connection, KiB", f"{per[0]:.1f}", f"{per[1]:.1f}", f"{per[0] / per[1]:.2f}")
    await asyncio.gather(*(ws.close() for ws in ours + theirs))


async def idle_cpu(t: Table, us: Server, bare: Server, seconds: float) -> None:
    a0, b0 = us.cpu_s(), bare.cpu_s()
    await asyncio.sleep(seconds)  # measuring idleness: there is nothing to await but time
    a, b = (us.cpu_s() - a0) / seconds * 100, (bare.cpu_s() - b0) / seconds * 100
    t.add(f"idle CPU over {seconds:.0f} s, % of a core", f"{a:.2f}", f"{b:.2f}")


async def mqtt_rows(t: Table, quick: bool) -> None:
    """bench/mqtt.py: the MQTT bridge's request/response against a bare aiomqtt echo (its baseline column)."""
    try:
        import mqtt  # bench/mqtt.py; needs aiomqtt (pictl[mqtt] or [test]) and Debian's mosquitto
    except ImportError as exc:
        print(f"  MQTT rows left out: {exc}", file=sys.stderr)
        return
    if mqtt.MOSQUITTO is None:
        print("  MQTT rows left out: mosquitto is not installed", file=sys.stderr)
        return
    for row in await mqtt.measure(quick):
        t.add(*row)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: check that everything runs")
    ap.add_argument("--fanout", action="store_true", help="only the event fan-out rows (10, 100, 1,000 subscribers)")
    args = ap.parse_args()
    q = args.quick
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))

    print(f"machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, "
          f"{platform.system()} {platform.release()}")
    t = Table()
    if args.fanout:
        us, bare = await pictl(), await baseline()
        try:
            await fanout(t, us, bare, rounds=2 if q else 15, sizes=[10, 100] if q else [10, 100, 1000])
        finally:
            await us.stop()
            await bare.stop()
            os.unlink(CONFIG)
        print(t.render())
        return
    starts, bare_starts = [], []
    for _ in range(1 if q else 5):
        for start, into in ((pictl, starts), (baseline, bare_starts)):
            s = await start()
            into.append(s.started_s * 1000)
            await s.stop()
    t.add("start to ready (serving), ms", spread(starts, "{:.0f}"), spread(bare_starts, "{:.0f}"),
          f"{statistics.median(starts) / statistics.median(bare_starts):.2f}")

    us, bare = await pictl(), await baseline()
    try:
        await idle_cpu(t, us, bare, 3 if q else 30)
        await memory(t, us, bare, 50 if q else 1000)
        await round_trip(t, us, bare, rounds=2 if q else 7, calls=200 if q else 3000)
        await throughput(t, us, bare, rounds=1 if q else 5, seconds=0.3 if q else 2.0)
        await confirmation(t, us, 4 if q else 60)
        await fanout(t, us, bare, rounds=2 if q else 15, sizes=[10, 100] if q else [10, 100, 1000])
    finally:
        await us.stop()
        await bare.stop()
        os.unlink(CONFIG)
    await mqtt_rows(t, q)
    print(t.render())


if __name__ == "__main__":
    asyncio.run(main())
