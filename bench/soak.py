"""Chaos soak: the demo plant under 50 clients, faults, reloads and disconnects, with invariants.

    .venv/bin/python bench/soak.py                  # 10 minutes (the figures in docs/benchmarks.md)
    .venv/bin/python bench/soak.py --duration 60    # what CI runs (bench/run.py --quick calls it)

Starts ``pictl serve --simulate`` on config/demo.toml (with an audit file and a connection limit
for 50 clients) as a child process. For the given duration:

- 50 clients (a quarter with the admin token, the rest with the panel token) mix actions (each
  with a unique ``request_key``, some with a timeout too short to confirm), state reads,
  ``system.status`` and ``system.ping``; every fifth client subscribes to ``*`` and, when it
  reconnects, resumes with ``since_seq`` and ``epoch``. Clients disconnect now and then, some
  right after sending an action (close, or a dropped TCP connection).
- A chaos schedule injects every fault of the plant in turn (door jammed, light no_feedback, fan
  offline, hall_temp unplugged), clears it, and reloads the config with SIGHUP: alternately with
  the light and fan changed (rebuilt) and with nothing changed.
- The plant's own record of every output and position change (``sim.timeline`` with ``since``) is
  collected as it goes; RSS and open fds of the daemon are sampled every 2 s.

Invariants, each reported as a count (the run exits 1 when any is broken, printing the first
offending record of each):

- lost: a request neither answered nor its connection closed within its deadline;
- inconsistent: a confirmed result the plant's record contradicts (the state it names was never
  the plant's during the call; "changed" without the output moving during the call);
- unsafe failure: a ``-32002`` after which the plant's output was not at its safe level;
- unauthorised move: an output change in the plant's record with no action call in the audit
  trail around it (nor a reload, which puts a rebuilt device's output safe);
- unaudited: a confirmed result with no audit entry (matched by request_key), or an audit entry
  with a request_key no client sent;
- event gap: a subscriber saw seq jump, repeat or go back without the daemon flagging a resync;
- fd leak: open fds after the load differ from before it; daemon tracebacks in its log;
- RSS growth after warm-up above --max-rss-growth (MB/hour; checked when the warm-up spans the
  at-most-once window, 300 s: on runs of 10 minutes or more; reported always).

``--bridge mqtt`` and ``--bridge wamp`` (bench/soak_mqtt.py, bench/soak_wamp.py; any
``module:factory`` of a :class:`soak_base.BridgeHook` too; both at once is what CI runs) add a
bridge: its own broker or router, restarted during the run, its own load and its own invariants.

Memory: ``--samples FILE`` writes the RSS samples (TSV), ``--chart PNG`` draws them (matplotlib,
the bench extra); ``--watch DIR`` runs the daemon under bench/traced.py, which writes RSS, Python's
allocated blocks and the objects by type every ``--trace-every`` seconds (and, with
``--trace-frames N``, tracemalloc's top growers by traceback); ``--malloc`` runs it with another
allocator setting (``malloc``: PYTHONMALLOC=malloc; ``arena2``: MALLOC_ARENA_MAX=2; ``trim``:
malloc_trim after each sample, through bench/traced.py) to tell fragmentation from a leak.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib
import itertools
import json
import os
import platform
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import ROOT, Daemon, p50_p99, slope
from soak_base import (
    SAFE,
    BridgeHook,
    Call,
    PlantRecord,
    Violations,
    clock_drift_ms,
    note_clock,
    read_audit,
    rpc,
)
from soak_clients import Client
from websockets.asyncio.client import ClientConnection, connect

ONCE_WINDOW_S = 300.0  # the daemon remembers each keyed action this long ([server] request_key_window's default)
FAULTS = [("door", "jammed"), ("light", "no_feedback"), ("fan", "offline"), ("hall_temp", "unplugged")]
BRIDGES = {"mqtt": "soak_mqtt:bridge", "wamp": "soak_wamp:bridge"}  # --bridge short names
MALLOC = {"malloc": {"PYTHONMALLOC": "malloc"}, "arena2": {"MALLOC_ARENA_MAX": "2"},
          "trim": {"PICTL_TRACE_TRIM": "1"}}


def load_bridge(spec: str) -> BridgeHook:
    module, _, name = BRIDGES.get(spec, spec).partition(":")
    factory = getattr(importlib.import_module(module), name or "bridge")
    return factory()  # type: ignore[no-any-return]


# -- the daemon --------------------------------------------------------------------------------------

class SoakDaemon(Daemon):
    """The daemon, with its reloads timed and its tracebacks and ERROR lines kept."""

    def __init__(self, config: Path, launcher: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        super().__init__(config, self._line, launcher=launcher, env=env)
        self.log = config.with_suffix(".log").open("w", buffering=1)  # kept with the config on failure
        self.reloads: list[tuple[float, float]] = []  # (SIGHUP sent, "config reloaded" seen), monotonic
        self.tracebacks: list[str] = []
        self.errors: list[str] = []  # ERROR lines (a refused reload would be one)
        self.safety_failures_logged = 0
        self._reloaded = asyncio.Event()

    def _line(self, line: str) -> None:
        if "controller.security.audit" not in line:  # the audit has its own file
            self.log.write(line)
        if "config reloaded from" in line:
            self._reloaded.set()
        elif "Traceback" in line:
            self.tracebacks.append(line.strip())  # a driver's known failure is one line: this is something else
        elif " ERROR " in line or " CRITICAL " in line or line.startswith("ERROR"):
            if "safe value FAILED" in line:
                # An output that could not be put back (a Modbus unit gone silent): the daemon says
                # so in one line and keeps the write pending. Counted, not a broken invariant.
                self.safety_failures_logged += 1
            else:
                self.errors.append(line.strip())

    async def reload(self) -> None:
        """SIGHUP, and wait for the daemon to say it applied the file."""
        self._reloaded.clear()
        sent = time.monotonic()
        self.signal(signal.SIGHUP)
        await asyncio.wait_for(self._reloaded.wait(), 30)
        self.reloads.append((sent, time.monotonic()))


def write_config(path: Path, audit: Path, variant: int, extra: str = "") -> None:
    """The demo config with an audit file and room for the clients; *variant* 1 changes the
    light's and the fan's timeouts (a reload rebuilds them), 0 is the demo's own."""
    text = (ROOT / "config" / "demo.toml").read_text()
    text = text.replace("[server]\n", "[server]\nmax_connections = 400\nmax_connections_per_address = 400\n", 1)
    if variant:
        for old in ('feedback = { gpio = 23, pull = "down" }\ntimeout = 1.0',
                    'output = { modbus = "plant", coil = 0, device_id = 1 }\ntimeout = 1.0'):
            assert old in text, f"config/demo.toml changed: {old!r} not found"
            text = text.replace(old, old.replace("timeout = 1.0", "timeout = 1.25"))
    # A shorter event buffer than the demo's, so that a subscriber away for a few seconds is
    # sometimes told to resync rather than always replayed.
    text += f'\n[events]\nbuffer = 200\n\n[audit]\nfile = "{audit}"\nmax_bytes = 1073741824\n{extra}'
    tmp = path.with_suffix(".new")
    tmp.write_text(text)
    tmp.replace(path)  # the daemon never reads half a file



# -- the soak ----------------------------------------------------------------------------------------

class Soak:
    def __init__(self, args: argparse.Namespace, bridges: list[BridgeHook], workdir: Path | None = None) -> None:
        self.args = args
        self.bridges = bridges
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="pictl-soak-"))
        self.config = self.workdir / "pictl.toml"
        self.audit = self.workdir / "audit.jsonl"
        self.extra = ""  # the bridges' config sections
        launcher = None
        if args.watch or args.malloc == "trim":
            out = args.watch or self.workdir / "watch"
            launcher = [sys.executable, str(ROOT / "bench" / "traced.py"), "--out", str(out),
                        "--every", str(args.trace_every), "--baseline", str(self.warmup_s),
                        "--frames", str(args.trace_frames), "--"]
        self.daemon = SoakDaemon(self.config, launcher, MALLOC.get(args.malloc or ""))
        self.violations = Violations()
        self.record = PlantRecord(self.violations)
        self.record.reloads = self.daemon.reloads
        self.counts: dict[str, int] = {k: 0 for k in (
            "connections", "connect retries", "reconnects", "disconnects mid-action", "events received",
            "resumes filled", "resumes flagged resync", "events replayed", "faults injected", "reloads",
            "failures that said the output could not be made safe")}
        self.calls: list[Call] = []
        self.pings: list[float] = []
        self.admins: list[ClientConnection] = []  # the soak's own links: chaos, plant record, checks
        self.samples: list[tuple[float, int, int]] = []  # (monotonic, RSS KiB, fds)
        self.started = 0.0
        self.stop_at = 0.0
        self.chaos_log: list[str] = []

    @property
    def url(self) -> str:
        return self.daemon.url

    async def run(self) -> int:
        fds_before = fds_after = 0
        bridge_counts: dict[str, dict[str, Any]] = {}
        try:
            for bridge in self.bridges:
                self.extra += await bridge.prepare(self.workdir)
            write_config(self.config, self.audit, 0, self.extra)
            ready_s = await self.daemon.start()
            print(f"pictl ready in {ready_s * 1000:.0f} ms at {self.daemon.url}; work dir {self.workdir}",
                  file=sys.stderr)
            admin, chaos, collector, safe = [await self.admin() for _ in range(4)]  # one each: a recv() per link
            await self.until_online(admin)
            self.started = self.record.started = time.monotonic()
            self.stop_at = self.started + self.args.duration
            for bridge in self.bridges:
                await bridge.start(self)
            fds_before = self.daemon.fds()  # with the bridge's own links open
            clients = [Client(self, i) for i in range(self.args.clients)]
            workers = [asyncio.create_task(c.run()) for c in clients]
            chaos_task = asyncio.create_task(self.chaos(chaos))
            watchers = [asyncio.create_task(self.sample()), asyncio.create_task(self.collect(collector)),
                        asyncio.create_task(self.record.watch_safe_writes(safe))]
            results = await asyncio.gather(*workers, chaos_task, return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException):
                    self.violations.add("client crashed", repr(r))
            for w in watchers:
                w.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
            await admin.close()
            admin = await self.admin()  # a fresh link: the idle one may have been closed under load
            await self.settle(admin)
            for bridge in self.bridges:
                await bridge.finish()
            await self.record.fetch(admin)
            fds_after = await self.fds_settled(fds_before)
            audit = read_audit(self.audit)
            self.check(audit, fds_before, fds_after)
            for bridge in self.bridges:
                bridge_counts[bridge.name] = bridge.check(audit)
        finally:
            for ws in self.admins:
                await ws.close()
            for bridge in self.bridges:
                await bridge.close()
            await self.daemon.stop()
        return self.report(fds_before, fds_after, bridge_counts)

    async def admin(self) -> ClientConnection:
        ws = await connect(self.daemon.url, additional_headers={"Authorization": "Bearer demo-admin"},
                           compression=None, open_timeout=20, max_size=None)
        self.admins.append(ws)
        return ws

    async def until_online(self, admin: ClientConnection, limit: float = 30.0) -> None:
        deadline = time.monotonic() + limit
        while not all(d["online"] for d in (await rpc(admin, "system.status"))["devices"].values()):
            if time.monotonic() > deadline:
                raise RuntimeError("devices not online")
            await asyncio.sleep(0.1)  # polling the daemon's own status: the way an operator would

    async def chaos(self, admin: ClientConnection) -> None:
        """Every fault in turn, held 2-3 s then cleared; a reload after each round of faults,
        alternately rebuilding the light and fan and changing nothing."""
        rng = random.Random(7)
        variant = 0
        for step in itertools.count():
            if time.monotonic() > self.stop_at:
                return  # between steps: a fault is never left injected, a reload never left half-timed
            await asyncio.sleep(rng.uniform(1.0, 2.0))
            device, fault = FAULTS[step % len(FAULTS)]
            await rpc(admin, "sim.fault", {"device": device, "fault": fault})
            self.counts["faults injected"] += 1
            self.log(f"fault {device} {fault}")
            await asyncio.sleep(rng.uniform(2.0, 3.0))
            await rpc(admin, "sim.clear", {"device": device})
            if step % len(FAULTS) == len(FAULTS) - 1:
                variant = 1 - variant if (step // len(FAULTS)) % 2 == 0 else variant
                write_config(self.config, self.audit, variant, self.extra)
                await self.daemon.reload()
                self.counts["reloads"] += 1
                self.log(f"reload (variant {variant})")

    def log(self, what: str) -> None:
        self.chaos_log.append(f"{time.monotonic() - self.started:7.1f} s  {what}")

    async def sample(self) -> None:
        while True:
            note_clock()
            self.samples.append((time.monotonic(), self.daemon.rss_kib(), self.daemon.fds()))
            await asyncio.sleep(2.0)

    async def collect(self, admin: ClientConnection) -> None:
        while True:
            await asyncio.sleep(0.5)
            await self.record.fetch(admin)

    async def settle(self, admin: ClientConnection) -> None:
        """Faults cleared, every device back online: the state the fds are compared in."""
        for device in SAFE | {"hall_temp": False}:
            with contextlib.suppress(RuntimeError):
                await rpc(admin, "sim.clear", {"device": device})
        await self.until_online(admin)

    async def fds_settled(self, before: int) -> int:
        """Open fds once the connections have gone (closing takes the server a moment)."""
        deadline = time.monotonic() + 10
        while (now := self.daemon.fds()) != before and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        return now

    # -- invariants --------------------------------------------------------------------------------
    def check(self, audit: list[dict[str, Any]], fds_before: int, fds_after: int) -> None:
        v = self.violations
        by_key = {e["params"].get("request_key"): e for e in audit
                  if isinstance(e.get("params"), dict) and e["params"].get("request_key")}
        sent_keys = {c.key for c in self.calls if c.key}.union(*(b.request_keys() for b in self.bridges))
        for key, entry in by_key.items():
            if key not in sent_keys:
                v.add("unaudited", {"audit entry for a call nobody sent": entry})
        for call in self.calls:
            if call.reply is None or call.device not in SAFE:
                continue
            result, error = call.reply.get("result"), call.reply.get("error")
            if result is not None and result.get("confirmed"):
                if call.key not in by_key:
                    v.add("unaudited", {"confirmed result without an audit entry": dataclasses.asdict(call)})
                self.record.check_confirmed(call, result)
            elif error is not None and error.get("code") == -32002:
                self.record.check_safe(call, self.counts, by_key.get(call.key))
        self.record.check_moves(audit)
        if fds_after != fds_before:
            v.add("fd leak", {"fds before the load": fds_before, "after": fds_after})
        for line in self.daemon.tracebacks:
            v.add("daemon traceback", line)
        for line in self.daemon.errors:
            v.add("daemon error logged", line)
        growth = self.rss_growth_mb_h()
        # Until the at-most-once window has filled, the daemon's memory rises by design: a shorter
        # warm-up (a 5-minute run's first minute) makes the figure indicative, not a verdict.
        if growth is not None and self.warmup_s >= ONCE_WINDOW_S and growth > self.args.max_rss_growth:
            v.add("RSS growth", {"MB per hour after warm-up": round(growth, 2), "limit": self.args.max_rss_growth})

    @property
    def warmup_s(self) -> float:
        """--warmup, or by default the at-most-once window (300 s: the daemon remembers each keyed
        action that long, so its memory fills until then) on runs of 10 minutes or more, and the
        first fifth of shorter runs (whose growth figure is then only indicative)."""
        if self.args.warmup is not None:
            return float(self.args.warmup)
        return ONCE_WINDOW_S if self.args.duration >= 600 else self.args.duration / 5

    def rss_growth_mb_h(self) -> float | None:
        """Least-squares slope of RSS after the warm-up."""
        warm = self.started + self.warmup_s
        points = [(t, rss) for t, rss, _ in self.samples if t >= warm]
        if len(points) < 3:
            return None
        return slope(points) * 3600 / 1024

    # -- report ------------------------------------------------------------------------------------
    def report(self, fds_before: int, fds_after: int, bridge_counts: dict[str, dict[str, Any]]) -> int:
        actions = [c for c in self.calls if "." in c.method and c.device in (*SAFE, "hall_temp")
                   and not c.method.endswith(".state")]
        outcomes: dict[str, int] = {}
        for c in actions:
            if c.reply is None:
                label = "connection closed first" if c.closed else "no reply"
            elif "result" in c.reply:
                label = "confirmed" if c.reply["result"].get("confirmed", True) else "ok"
            else:
                label = f"error {c.reply['error']['code']}"
            outcomes[label] = outcomes.get(label, 0) + 1
        rss = [s[1] for s in self.samples]
        growth = self.rss_growth_mb_h()
        out = {
            "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}, load {os.getloadavg()}",
            "duration_s": self.args.duration,
            "clients": self.args.clients,
            **({"allocator": self.args.malloc} if self.args.malloc else {}),
            "requests": len(self.calls),
            "safety failures logged by the daemon": self.daemon.safety_failures_logged,
            "actions": outcomes,
            **self.counts,
            "invariants broken": {name: self.violations.counts.get(name, 0) for name in INVARIANTS}
            | {k: n for k, n in self.violations.counts.items() if k not in INVARIANTS},
            "RSS MiB start/max/end": [round(rss[0] / 1024, 1), round(max(rss) / 1024, 1), round(rss[-1] / 1024, 1)]
            if rss else None,
            "warm-up s": self.warmup_s,
            "RSS growth after warm-up, MB/hour": None if growth is None else round(growth, 2),
            "RSS MiB each minute": [round(rss / 1024, 2) for t, rss, _ in self.samples
                                    if int((t - self.started) / 2) % 30 == 0],
            "open fds before/after the load": [fds_before, fds_after],
            "open fds max under load": max((s[2] for s in self.samples), default=None),
            "action overhead ms p50/p99": p50_p99(self.record.overheads),
            "system.ping ms p50/p99 under load": p50_p99(self.pings),
            "wall clock slewed against monotonic, ms": clock_drift_ms(),
            **bridge_counts,
        }
        print(json.dumps(out, indent=2))
        self.write_samples()
        if self.args.verbose:
            print("\n".join(self.chaos_log), file=sys.stderr)
        if self.violations.total():
            print("BROKEN INVARIANTS; first offending record of each:", file=sys.stderr)
            for what, record in self.violations.first.items():
                print(f"  {what}: {json.dumps(record, default=str)[:2000]}", file=sys.stderr)
            print(f"config and audit trail kept in {self.workdir}", file=sys.stderr)
            return 1
        if not self.args.watch:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return 0

    def write_samples(self) -> None:
        """--samples: the RSS samples as TSV; --chart: drawn, with the warm-up and the fitted slope."""
        if self.args.samples:
            lines = ["seconds\trss_kib\tfds"]
            lines += [f"{t - self.started:.1f}\t{rss}\t{fds}" for t, rss, fds in self.samples]
            Path(self.args.samples).write_text("\n".join(lines) + "\n")
        if self.args.chart and self.samples:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(9, 3.6))
            ax.plot([(t - self.started) / 60 for t, _, _ in self.samples], [r / 1024 for _, r, _ in self.samples],
                    lw=1, label="RSS")
            ax.axvline(self.warmup_s / 60, color="grey", ls="--", lw=1, label="end of warm-up")
            growth = self.rss_growth_mb_h()
            ax.set(xlabel="minutes", ylabel="MiB", title=f"pictl RSS under the chaos soak ({self.args.clients} "
                   f"clients{''.join(', ' + b.name for b in self.bridges)}): "
                   f"{'n/a' if growth is None else f'{growth:+.2f}'} MB/hour after warm-up")
            ax.legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(self.args.chart, dpi=90)
            print(f"chart: {self.args.chart}", file=sys.stderr)


INVARIANTS = ("lost", "inconsistent", "unsafe failure", "unauthorised move", "unaudited", "event gap", "fd leak",
              "RSS growth")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--max-rss-growth", type=float, default=1.0,
                    help="MB per hour, checked when the warm-up is >= 300 s (runs of 10 minutes or more)")
    ap.add_argument("--warmup", type=float, help="seconds before RSS growth is fitted (default: 300 on runs of "
                    "10 minutes or more, else a fifth of the run)")
    ap.add_argument("--bridge", action="append", default=[],
                    help="mqtt, wamp, or module:factory of a BridgeHook to soak with the daemon (repeatable)")
    ap.add_argument("--samples", help="write the RSS samples (seconds, KiB, fds) to this TSV file")
    ap.add_argument("--chart", help="draw RSS over time into this PNG (matplotlib: the bench extra)")
    ap.add_argument("--watch", type=Path, help="run the daemon under bench/traced.py, writing into this directory "
                    "its RSS, allocated blocks and objects by type (and with --trace-frames, tracemalloc's top "
                    "growers by traceback) every --trace-every seconds")
    ap.add_argument("--trace-frames", type=int, default=0, help="tracemalloc traceback depth (0: no tracemalloc)")
    ap.add_argument("--trace-every", type=float, default=60.0, help="seconds between samples inside the daemon")
    ap.add_argument("--malloc", choices=sorted(MALLOC), help="run the daemon with another allocator setting")
    ap.add_argument("-v", "--verbose", action="store_true", help="print the chaos schedule as it ran")
    args = ap.parse_args()
    return asyncio.run(Soak(args, [load_bridge(b) for b in args.bridge]).run())


if __name__ == "__main__":
    sys.exit(main())
