"""The MQTT bridge's request/response round trip, side by side with a bare aiomqtt echo, in one run.

    .venv/bin/python bench/mqtt.py            # full run (about a minute), prints the table
    .venv/bin/python bench/mqtt.py --quick    # seconds: checks the benchmark still works (CI runs it)

One Mosquitto (Debian's, ``set_tcp_nodelay true``) on a free loopback port; two
responders as child processes: ``pictl serve --simulate`` with ``[mqtt]``
answering ``system.ping`` on ``pictl/bench/rpc``, and a bare aiomqtt client
(this file with ``--echo``) that sends every request's payload straight back.
This process is the requester: MQTT 5, QoS 1 both ways, response topic and
correlation data, TCP_NODELAY, one call at a time. Rounds alternate between
the two and the ratio is taken per round. bench/run.py adds these rows to its table.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.mosquitto import MOSQUITTO, Mosquitto  # noqa: E402  (the tests' broker runner)

PICTL = str(Path(sys.executable).parent / "pictl")
PING = b'{"jsonrpc":"2.0","id":1,"method":"system.ping"}'
NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
ECHO_TOPIC = "bench/echo/rpc"
PICTL_TOPIC = "pictl/bench/rpc"


def client(port: int) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5, socket_options=NODELAY)


async def echo(port: int) -> None:
    """The baseline: answer every request on ECHO_TOPIC with its own payload."""
    async with client(port) as c:
        await c.subscribe(ECHO_TOPIC, qos=1)
        print("echo ready", flush=True)
        async for message in c.messages:
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = message.properties.CorrelationData  # type: ignore[union-attr]
            await c.publish(message.properties.ResponseTopic, message.payload, qos=1,  # type: ignore[union-attr]
                            properties=props)


async def wait_line(proc: asyncio.subprocess.Process, text: str, timeout: float = 30.0) -> None:
    stream = proc.stdout if "echo" in text else proc.stderr
    assert stream is not None
    async with asyncio.timeout(timeout):
        while True:
            line = (await stream.readline()).decode()
            if not line:
                raise RuntimeError(f"child exited before {text!r}")
            if text in line:
                break
    asyncio.get_running_loop().create_task(stream.read())  # keep draining its output


async def calls(c: aiomqtt.Client, topic: str, reply_topic: str, n: int) -> list[float]:
    """*n* sequential request/response round trips, microseconds each."""
    out = []
    messages = c.messages
    for i in range(n):
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = reply_topic
        props.CorrelationData = i.to_bytes(4, "big")
        t = time.perf_counter()
        await c.publish(topic, PING, qos=1, properties=props)
        reply = await anext(messages)
        out.append((time.perf_counter() - t) * 1e6)
        assert reply.properties is not None and reply.properties.CorrelationData == props.CorrelationData
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


async def measure(quick: bool) -> list[tuple[str, str, str, str]]:
    """Rows (measure, pictl, bare aiomqtt, ratio) for bench/run.py's table."""
    if MOSQUITTO is None:
        raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
    rounds, n = (2, 100) if quick else (7, 2000)
    with tempfile.TemporaryDirectory(prefix="pictl-bench-mqtt-") as tmp:
        broker = Mosquitto(Path(tmp))
        await broker.start()
        conf = Path(tmp) / "pictl.toml"
        conf.write_text((ROOT / "config" / "demo.toml").read_text()
                        + '\n[auth.roles.automation]\nallow = ["system.ping"]\n'
                        + f'\n[mqtt]\nurl = "{broker.url}"\nnode = "bench"\nrole = "automation"\n'
                        + 'discovery_prefix = ""\n')
        ours = await asyncio.create_subprocess_exec(PICTL, "serve", "--config", str(conf), "--simulate", "--listen",
                                                    "127.0.0.1:0", stderr=asyncio.subprocess.PIPE, cwd=ROOT)
        bare = await asyncio.create_subprocess_exec(sys.executable, __file__, "--echo", str(broker.port),
                                                    stdout=asyncio.subprocess.PIPE)
        try:
            await wait_line(ours, "connected as node")
            await wait_line(bare, "echo ready")
            async with client(broker.port) as c:
                await c.subscribe("bench/replies", qos=1)
                await calls(c, PICTL_TOPIC, "bench/replies", 200)  # warm both up
                await calls(c, ECHO_TOPIC, "bench/replies", 200)
                p50: dict[str, list[float]] = {"ours": [], "bare": []}
                p99: dict[str, list[float]] = {"ours": [], "bare": []}
                for _ in range(rounds):
                    for key, topic in (("ours", PICTL_TOPIC), ("bare", ECHO_TOPIC)):
                        v = await calls(c, topic, "bench/replies", n)
                        p50[key].append(pct(v, 0.5))
                        p99[key].append(pct(v, 0.99))
        finally:
            for proc in (ours, bare):
                proc.terminate()
                await proc.wait()
            await broker.stop()
    r50 = [a / b for a, b in zip(p50["ours"], p50["bare"], strict=True)]
    r99 = [a / b for a, b in zip(p99["ours"], p99["bare"], strict=True)]
    return [
        (f"MQTT rpc system.ping p50, us (vs bare aiomqtt echo; {rounds} x {n} calls)",
         spread(p50["ours"], "{:.0f}"), spread(p50["bare"], "{:.0f}"), spread(r50)),
        ("MQTT rpc system.ping p99, us", spread(p99["ours"], "{:.0f}"), spread(p99["bare"], "{:.0f}"), spread(r99)),
    ]


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: check that everything runs")
    ap.add_argument("--echo", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the baseline child
    args = ap.parse_args()
    if args.echo:
        await echo(args.echo)
        return
    rows = await measure(args.quick)
    head = ("measure", "pictl", "bare aiomqtt", "pictl / bare")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    for row in (head, tuple("-" * w for w in widths), *rows):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


if __name__ == "__main__":
    asyncio.run(main())
