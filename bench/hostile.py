"""Hostile round two (issue 21): eight attacks on the daemon, before and after, side by side.

    .venv/bin/python bench/hostile.py gone            # one scenario, this tree and the baseline
    .venv/bin/python bench/hostile.py all             # all eight (about ten minutes, most of it the baseline)
    .venv/bin/python bench/hostile.py stall --tree .  # this tree only
    .venv/bin/python bench/hostile.py all --quick     # small numbers: checks that every scenario runs

Each scenario starts ``pictl serve --simulate`` (the demo's door and light; a Mosquitto of its own
where MQTT is involved) as a child process from each tree: this one, and the baseline unpacked from
git (``--before-rev``, default e669a53: main before issue 21). What moved is read from the plant's
own record (``sim.timeline`` with ``since``, CLOCK_MONOTONIC), memory and descriptors from
/proc, log lines from the child's stderr.

    gone              1,000 alternating door.open/door.close frames, then FIN (and again RST):
                      relay switches after the client left, for how long, the door's end state
    stall             5,000 MQTT ON/OFF to the light at full speed: not_confirmed outcomes whose
                      observed equals expected, RSS peak and 30 s later, switches, the last word
    mqtt-size         one 200 MB publish, then 1,000 of 256 KB, to pictl/N/rpc: RSS peak and after
    slow-handshakes   1,100 sockets that never send a request, held 30 s (the daemon at 1,024
                      descriptors): a new client's wait, log lines and bytes, descriptors, refusals
    reload            door open, light on, a reload rebuilding both: state events in the next 4 s
    logs              4,100 failed logins from 4,100 addresses, 1,000 malformed MQTT commands: lines
    lockout           one address locked out, then 4,100 single failures elsewhere: still locked?
    reply-topic       an rpc reply asked for on pictl/pi02/door/set; a 10 KB parameter name
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import Daemon, raise_fd_limit  # noqa: E402
from bench.failed_logins import unpack  # noqa: E402
from tests.mosquitto import Mosquitto  # noqa: E402

BEFORE = "e669a53"
DEMO = (ROOT / "config" / "demo.toml").read_text().split("\n# A Modbus TCP link")[0] + "\n"
ADMIN = {"Authorization": "Bearer demo-admin"}
MQTT = '\n[auth.roles.automation]\nallow = ["door.*", "light.*", "*.state", "system.ping"]\n' \
       '[mqtt]\nurl = "mqtt://127.0.0.1:{port}"\nnode = "pi01"\nrole = "automation"\n'
NODE = "pictl/pi01"
Figures = dict[str, Any]


class Run:
    """One daemon from one tree, with what a scenario reads off it."""

    def __init__(self, tree: Path | None, work: Path, text: str, nofile: int | None = None) -> None:
        self.config = work / f"hostile-{id(self)}.toml"
        self.config.write_text(text)
        self.lines: list[str] = []
        self.daemon = Daemon(self.config, self.lines.append, tree=tree, nofile=nofile)

    async def __aenter__(self) -> Run:
        await self.daemon.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.daemon.stop()

    @property
    def url(self) -> str:
        return self.daemon.url

    def log_mark(self) -> tuple[int, int]:
        return len(self.lines), sum(len(line) for line in self.lines)

    def log_since(self, mark: tuple[int, int]) -> tuple[int, int]:
        lines, size = self.log_mark()
        return lines - mark[0], size - mark[1]


async def admin(url: str, **kwargs: Any) -> ClientConnection:
    return await connect(url, additional_headers=ADMIN, compression=None, max_size=None, **kwargs)


async def call(ws: ClientConnection, method: str, params: dict[str, Any] | None = None) -> Any:
    await ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}}))
    while True:
        reply = json.loads(await ws.recv())
        if isinstance(reply, dict) and reply.get("id") == 1:
            return reply


async def outputs(ws: ClientConnection, device: str, since: float) -> list[tuple[float, Any]]:
    return (await call(ws, "sim.timeline", {"device": device, "since": since}))["result"]["outputs"]


async def until_quiet(ws: ClientConnection, device: str, since: float, quiet: float, cap: float) -> list[Any]:
    """The device's output changes after *since*, once none came for *quiet* seconds (or after *cap*)."""
    seen: list[Any] = []
    changed = start = time.monotonic()
    while time.monotonic() - changed < quiet and time.monotonic() - start < cap:
        await asyncio.sleep(0.5)
        now = await outputs(ws, device, since)
        if len(now) != len(seen):
            seen, changed = now, time.monotonic()
    return seen


class Sampler:
    """RSS of the daemon every 50 ms while it runs: the peak."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.peak = daemon.rss_kib()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, self.daemon.rss_kib())
            await asyncio.sleep(0.05)

    def stop(self) -> float:
        self._task.cancel()
        return round(self.peak / 1024, 1)


def mib(daemon: Daemon) -> float:
    return round(daemon.rss_kib() / 1024, 1)


def request(payload: str | bytes, reply_to: str | None) -> tuple[str | bytes, Properties | None]:
    if reply_to is None:
        return payload, None
    properties = Properties(PacketTypes.PUBLISH)
    properties.ResponseTopic = reply_to
    properties.CorrelationData = b"bench"
    return payload, properties


# -- the scenarios --------------------------------------------------------------------------------
async def gone(tree: Path | None, work: Path, quick: bool) -> Figures:
    frames = [json.dumps({"jsonrpc": "2.0", "id": i, "method": "door.open" if i % 2 == 0 else "door.close"})
              for i in range(100 if quick else 1000)]
    out: Figures = {}
    for ending in ("fin", "rst"):
        async with Run(tree, work, DEMO) as run:
            watch = await admin(run.url)
            t0 = time.monotonic()
            ws = await admin(run.url)
            for frame in frames:
                await ws.send(frame)
            left = time.monotonic()
            if ending == "fin":
                ws.transport.write_eof()
            else:
                ws.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                                 struct.pack("ii", 1, 0))
                ws.transport.abort()
            after = await until_quiet(watch, "door", left, quiet=5.0, cap=30.0 if quick else 150.0)
            state = (await call(watch, "door.state"))["result"]["state"]
            out[ending] = {"switches_while_sending": len(await outputs(watch, "door", t0)) - len(after),
                           "switches_after_leaving": len(after),
                           "switching_for_s": round(after[-1][0] - left, 1) if after else 0.0,
                           "door_at_end": state}
            ws.transport.abort()
            await watch.close()
    return out


async def stall(tree: Path | None, work: Path, quick: bool) -> Figures:
    n = 500 if quick else 5000
    broker = Mosquitto(work)
    await broker.start()
    try:
        async with Run(tree, work, DEMO + MQTT.format(port=broker.port)) as run:
            watch = await admin(run.url)
            async with aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as ha:
                await ha.subscribe(f"{NODE}/light/attributes", qos=1)
                await ha.subscribe(f"{NODE}/availability", qos=1)
                async with asyncio.timeout(30):  # the bridge is up (its retained availability)
                    async for message in ha.messages:
                        if message.topic.value.endswith("availability") and message.payload == b"online":
                            break
                await asyncio.sleep(1.0)
                rss_idle, mark, t0 = mib(run.daemon), run.log_mark(), time.monotonic()
                sampler = Sampler(run.daemon)
                words = ["ON", "OFF"] * (n // 2) + ["ON"]  # the last word: on
                started = time.perf_counter()
                await asyncio.gather(*(ha.publish(f"{NODE}/light/set", w, qos=1) for w in words))
                rate = round(len(words) / (time.perf_counter() - started))
                moved = await until_quiet(watch, "light", t0, quiet=3.0, cap=120.0)
                rss_peak = sampler.stop()
                rss_after = mib(run.daemon)
                log_flood = run.log_since(mark)
                await asyncio.sleep(5.0 if quick else 30.0)
                rss_idle_after = mib(run.daemon)
                last = None
                while True:  # the last outcome on the attributes topic (retained)
                    try:
                        async with asyncio.timeout(1.0):
                            message = await anext(aiter(ha.messages))
                    except TimeoutError:
                        break
                    if message.topic.value.endswith("attributes"):
                        last = json.loads(message.payload)  # type: ignore[arg-type]
            audits = [json.loads(line.split(" audit ", 1)[1]) for line in run.lines[mark[0]:] if " audit {" in line]
            false_failures = [a for a in audits if a.get("outcome") == "not_confirmed"
                              and a.get("error", {}).get("data", {}).get("expected")
                              == a.get("error", {}).get("data", {}).get("observed")]
            state = (await call(watch, "light.state"))["result"]["state"]
            await watch.close()
            metrics = await asyncio.to_thread(_metrics, run.url)
            dropped = {reason: metrics.get(f"pictl_rpc_dropped_total{{'reason': '{reason}'}}")
                       for reason in ("superseded", "overflow")}
            return {"commands": len(words), "dropped": dropped, "sent_per_s": rate, "switches": len(moved),
                    "not_confirmed_but_observed": len(false_failures),
                    "outcomes": {o: sum(a.get("outcome") == o for a in audits)
                                 for o in sorted({a.get("outcome") for a in audits})},
                    "last_outcome": None if last is None else (last.get("action"), last.get("confirmed"),
                                                               (last.get("error") or {}).get("message")),
                    "light_at_end": state, "rss_idle_mib": rss_idle, "rss_peak_mib": rss_peak,
                    "rss_after_mib": rss_after, "rss_idle_after_mib": rss_idle_after,
                    "log_lines": log_flood[0], "log_kib": round(log_flood[1] / 1024, 1),
                    "pending_publish_lines": sum("pending publish" in line for line in run.lines)}
    finally:
        await broker.stop()


async def mqtt_size(tree: Path | None, work: Path, quick: bool) -> Figures:
    broker = Mosquitto(work)
    await broker.start()
    out: Figures = {}
    try:
        async with Run(tree, work, DEMO + MQTT.format(port=broker.port)) as run, \
                aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5, timeout=120) as attacker:
            await attacker.subscribe("answers/#", qos=1)
            await asyncio.sleep(1.0)
            for label, size, count in (("one 200 MB", 200 * 2**20 if not quick else 20 * 2**20, 1),
                                       ("1000 x 256 KB", 256 * 1024, 100 if quick else 1000)):
                rss_before = mib(run.daemon)
                sampler = Sampler(run.daemon)
                payload, properties = request(b"{" + b" " * (size - 2) + b"}", "answers/size")
                for _ in range(count):
                    await attacker.publish(f"{NODE}/rpc", payload, qos=1, properties=properties)
                await asyncio.sleep(3.0)
                replies = 0
                while True:
                    try:
                        async with asyncio.timeout(1.0):
                            await anext(aiter(attacker.messages))
                            replies += 1
                    except TimeoutError:
                        break
                peak = sampler.stop()
                await asyncio.sleep(3.0 if quick else 30.0)
                out[label] = {"rss_before_mib": rss_before, "rss_peak_mib": peak, "rss_idle_after_mib":
                              mib(run.daemon), "answered_too_large": replies}
    finally:
        await broker.stop()
    return out


async def slow_handshakes(tree: Path | None, work: Path, quick: bool) -> Figures:
    raise_fd_limit()
    n, hold = (200, 12.0) if quick else (1100, 30.0)
    async with Run(tree, work, DEMO, nofile=1024) as run:
        port = int(run.url.rsplit(":", 1)[1].split("/")[0])
        stop = asyncio.Event()
        held: set[asyncio.StreamWriter] = set()

        async def slow(i: int) -> None:
            source = f"127.0.{50 + i // 100}.{i % 100 + 1}"
            while not stop.is_set():
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
                except OSError:
                    await asyncio.sleep(0.1)
                    continue
                held.add(writer)
                with contextlib.suppress(OSError):
                    await reader.read(1)  # until the daemon drops it
                held.discard(writer)
                writer.close()
                await asyncio.sleep(0.1)

        mark, fds = run.log_mark(), [run.daemon.fds()]
        attack = []
        for i in range(n):  # in batches: a burst larger than the listen backlog would wait in the kernel
            attack.append(asyncio.get_running_loop().create_task(slow(i)))
            if i % 50 == 49:
                await asyncio.sleep(0.05)
        waits = []
        t_end = time.monotonic() + hold
        while time.monotonic() < t_end:
            await asyncio.sleep(1.0)
            fds.append(run.daemon.fds())
            t = time.perf_counter()
            try:
                ws = await admin(run.url, open_timeout=20, local_addr=("127.0.9.9", 0))
                await call(ws, "system.ping")
                await ws.close()
                waits.append(time.perf_counter() - t)
            except (OSError, TimeoutError, InvalidHandshake):  # refused, reset, or no answer in 20 s
                waits.append(float("inf"))
        lines, size = run.log_since(mark)
        stop.set()
        for task in attack:  # a socket whose handshake the kernel dropped at a full backlog waits forever
            task.cancel()
        for writer in list(held):
            writer.close()
        await asyncio.gather(*attack, return_exceptions=True)
        await asyncio.sleep(1.0)
        ws = await admin(run.url)
        metrics = await asyncio.to_thread(_metrics, run.url)
        await ws.close()
        finite = sorted(w for w in waits if w != float("inf"))
        return {"slow_sockets": n, "held_s": hold, "client_wait_s_median": round(finite[len(finite) // 2], 2)
                if finite else None, "client_wait_s_max": round(max(waits), 2) if waits else None,
                "clients_failed": sum(w == float("inf") for w in waits), "daemon_fds_max": max(fds),
                "log_lines": lines, "log_kib": round(size / 1024, 1),
                "accept_tracebacks": sum("out of system resource" in line for line in run.lines),
                "refused": {k: v for k, v in metrics.items() if k.startswith("pictl_ws_refused_total") and v}}


def _metrics(url: str) -> dict[str, float]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families
    base = url.replace("ws://", "http://").rsplit("/ws", 1)[0]
    with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return {f"{s.name}{dict(sorted(s.labels.items())) or ''}": s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def reload(tree: Path | None, work: Path, quick: bool) -> Figures:
    async with Run(tree, work, DEMO) as run:
        ws = await admin(run.url)
        await call(ws, "events.subscribe", {"topics": ["*.state"]})
        await call(ws, "door.open")
        await call(ws, "light.on")
        run.config.write_text(DEMO.replace("timeout = 2.0", "timeout = 2.5").replace("timeout = 1.0", "timeout = 1.5"))
        run.daemon.signal(signal.SIGHUP)
        events = []
        t_end = time.monotonic() + 4.0
        while (left := t_end - time.monotonic()) > 0:
            try:
                async with asyncio.timeout(left):
                    message = json.loads(await ws.recv())
            except TimeoutError:
                break
            if message.get("method") == "event":
                events.append(message["params"])
        door = (await call(ws, "door.state"))["result"]["state"]
        light = (await call(ws, "light.state"))["result"]["state"]
        await ws.close()
        return {"state_events_in_4_s": [(e["topic"], e["data"]["state"], e["data"].get("cause")) for e in events],
                "door_then": door, "light_then": light}


async def failed_logins(url: str, addresses: list[str], token: str = "wrong") -> list[int]:
    slots = asyncio.Semaphore(20)

    async def one(source: str) -> int:
        async with slots:
            try:
                ws = await connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                                   local_addr=(source, 0), open_timeout=30)
            except InvalidStatus as refused:
                return refused.response.status_code
            await ws.close()
            return 101

    return await asyncio.gather(*(one(a) for a in addresses))


def addresses(n: int, base: int = 60) -> list[str]:
    return [f"127.{base + i // 62500}.{i // 250 % 250}.{i % 250 + 1}" for i in range(n)]


async def logs(tree: Path | None, work: Path, quick: bool) -> Figures:
    n = 410 if quick else 4100
    broker = Mosquitto(work)
    await broker.start()
    try:
        async with Run(tree, work, DEMO + MQTT.format(port=broker.port)) as run:
            mark = run.log_mark()
            await failed_logins(run.url, addresses(n))
            await asyncio.sleep(1.0)
            logins = run.log_since(mark)
            mark = run.log_mark()
            async with aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as bad:
                await asyncio.sleep(1.0)
                await asyncio.gather(*(bad.publish(f"{NODE}/door/set", "WIGGLE", qos=1) for _ in range(n // 4)))
                await asyncio.sleep(2.0)
            malformed = run.log_since(mark)
            return {"failed_logins": n, "login_log_lines": logins[0], "malformed_mqtt": n // 4,
                    "malformed_log_lines": malformed[0]}
    finally:
        await broker.stop()


async def lockout(tree: Path | None, work: Path, quick: bool) -> Figures:
    async with Run(tree, work, DEMO) as run:
        victim = "127.0.0.66"
        first = await failed_logins(run.url, [victim] * 10)
        flood = await failed_logins(run.url, addresses(410 if quick else 4100, base=90))
        again = await failed_logins(run.url, [victim])
        right = await failed_logins(run.url, [victim], token="demo-admin")
        return {"victim_after_10_failures": first[-1], "flood": f"{len(flood)} single failures, statuses "
                f"{sorted(set(flood))}", "victim_wrong_token_after_flood": again[0],
                "victim_right_token_after_flood": right[0]}


async def reply_topic(tree: Path | None, work: Path, quick: bool) -> Figures:
    broker = Mosquitto(work)
    await broker.start()
    try:
        async with Run(tree, work, DEMO + MQTT.format(port=broker.port)) as run:
            async with aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as mqtt:
                await mqtt.subscribe("pictl/pi02/#", qos=1)
                await mqtt.subscribe("answers/#", qos=1)
                await asyncio.sleep(1.0)
                ping = '{"jsonrpc": "2.0", "id": 1, "method": "system.ping"}'
                long = json.dumps({"jsonrpc": "2.0", "id": 2, "method": "door.open", "params": {"x" * 10_000: 1}})
                for payload, reply_to in ((ping, "pictl/pi02/door/set"), (long, "answers/long")):
                    body, properties = request(payload, reply_to)
                    await mqtt.publish(f"{NODE}/rpc", body, qos=1, properties=properties)
                seen: dict[str, int] = {}
                while len(seen) < 2:
                    try:
                        async with asyncio.timeout(3.0):
                            message = await anext(aiter(mqtt.messages))
                    except TimeoutError:
                        break
                    seen[message.topic.value] = len(message.payload)  # type: ignore[arg-type]
            ws = await admin(run.url)
            await ws.send(long)
            over_ws = len(await ws.recv())
            await ws.close()
            return {"reply_on_pictl/pi02/door/set": "pictl/pi02/door/set" in seen,
                    "10 KB name, reply bytes over MQTT": seen.get("answers/long"), "over the WebSocket": over_ws}
    finally:
        await broker.stop()


SCENARIOS: dict[str, Callable[[Path | None, Path, bool], Awaitable[Figures]]] = {
    "gone": gone, "stall": stall, "mqtt-size": mqtt_size, "slow-handshakes": slow_handshakes,
    "reload": reload, "logs": logs, "lockout": lockout, "reply-topic": reply_topic}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scenario", choices=[*SCENARIOS, "all"])
    parser.add_argument("--before-rev", default=BEFORE, help="the baseline's git revision")
    parser.add_argument("--tree", type=Path, help="run only this tree (. for this one)")
    parser.add_argument("--quick", action="store_true", help="small numbers: checks that it runs")
    args = parser.parse_args()
    logging.getLogger("mqtt").setLevel(logging.ERROR)  # our own clients' "pending publish calls" while flooding
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    with tempfile.TemporaryDirectory(prefix="pictl-hostile-") as tmp:
        work = Path(tmp)
        if args.tree is not None:
            trees: dict[str, Path | None] = {str(args.tree): None if args.tree.resolve() == ROOT else args.tree}
        else:
            before = unpack(args.before_rev, work / "before")
            if before is None:
                raise SystemExit(f"git cannot give {args.before_rev}")
            trees = {f"before ({args.before_rev})": before, "after (this tree)": None}
        for name in names:
            for label, tree in trees.items():
                t = time.perf_counter()
                figures = await SCENARIOS[name](tree, work, args.quick)
                print(f"{name:16} {label:22} {time.perf_counter() - t:6.1f} s  {json.dumps(figures)}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
