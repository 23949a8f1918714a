#!/usr/bin/env python3
"""Log events (sensor readings by default) to a CSV file: time, topic, seq, value, unit, data.

    PICTL_TOKEN=... python examples/log_events_csv.py --out readings.csv            # *.reading
    PICTL_TOKEN=... python examples/log_events_csv.py --out doors.csv "door.*" "*.state"

Rows are flushed as they come, so `tail -f` works and a crash loses nothing written. Events missed
while the link was down are replayed after the reconnect; when the daemon cannot replay them (it
restarted), a "resync" row marks the gap.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import sys
from typing import Any

from controller.client import Client, ClientError, Event, RpcError

COLUMNS = ["time", "topic", "seq", "value", "unit", "data"]


def row(event: Event) -> list[Any]:
    data = event.data
    if event.is_resync:
        return [event.time or "", "resync", event.seq, "", "", "events were missed here"]
    value = data.get("value", data.get("state", ""))
    return [event.time, event.topic, event.seq, value, data.get("unit", ""),
            json.dumps(data, separators=(",", ":"), sort_keys=True)]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("patterns", nargs="*", default=["*.reading"], metavar="PATTERN",
                   help="topic patterns (default: *.reading)")
    p.add_argument("--out", help="CSV file to append to (default: standard output)")
    p.add_argument("--count", type=int, help="stop after this many rows")
    p.add_argument("--url", default=os.environ.get("PICTL_URL", "ws://127.0.0.1:8765/ws"))
    p.add_argument("--token", default=os.environ.get("PICTL_TOKEN"))
    return p


async def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    new_file = not args.out or not os.path.exists(args.out) or os.path.getsize(args.out) == 0
    out = open(args.out, "a", newline="") if args.out else sys.stdout  # noqa: SIM115 - closed below
    try:
        writer = csv.writer(out)
        if new_file:
            writer.writerow(COLUMNS)
        async with Client(args.url, args.token) as pictl:
            stream = await pictl.events(*args.patterns).start()
            print(f"logging {' '.join(args.patterns)} to {args.out or 'stdout'}", file=sys.stderr, flush=True)
            written = 0
            async for event in stream:
                writer.writerow(row(event))
                out.flush()
                written += 1
                if args.count is not None and written >= args.count:
                    break
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except (ClientError, RpcError) as exc:
        sys.exit(f"log_events_csv: {exc}")
    except KeyboardInterrupt:
        sys.exit(0)
