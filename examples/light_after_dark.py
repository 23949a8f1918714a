#!/usr/bin/env python3
"""Turn the light on when the door opens after dark.

    PICTL_TOKEN=... python examples/light_after_dark.py --dark-after 19:30 --dark-before 06:45

Try it by day with a pretend clock:  --now 22:00   (and --once to stop after the first switch-on).
It keeps running through daemon restarts and Wi-Fi drops: the client reconnects and resumes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from datetime import datetime, time

from controller.client import Client, ClientError, RpcError


def hhmm(text: str) -> time:
    try:
        return datetime.strptime(text, "%H:%M").time()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not HH:MM") from None


def is_dark(now: time, after: time, before: time) -> bool:
    """Dark from *after* until *before*, across midnight when after > before."""
    if after > before:
        return now >= after or now < before
    return after <= now < before


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default=os.environ.get("PICTL_URL", "ws://127.0.0.1:8765/ws"))
    p.add_argument("--token", default=os.environ.get("PICTL_TOKEN"))
    p.add_argument("--door", default="door", help="the door device (default: door)")
    p.add_argument("--light", default="light", help="the light device (default: light)")
    p.add_argument("--dark-after", type=hhmm, default=time(19, 0), help="HH:MM (default 19:00)")
    p.add_argument("--dark-before", type=hhmm, default=time(7, 0), help="HH:MM (default 07:00)")
    p.add_argument("--now", type=hhmm, help="pretend it is this time (HH:MM), for trying it out")
    p.add_argument("--once", action="store_true", help="exit after switching the light on once")
    return p


async def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    async with Client(args.url, args.token) as pictl:
        stream = await pictl.events(f"{args.door}.state").start()
        print(f"watching {args.door}; dark from {args.dark_after:%H:%M} to {args.dark_before:%H:%M}",
              file=sys.stderr, flush=True)
        previous = (await pictl.call(f"{args.door}.state"))["state"]
        async for event in stream:
            if event.is_resync:  # events were missed: take the status as the truth and go on
                previous = event.data["devices"][args.door]["state"]["state"]
                continue
            state = event.data["state"]
            if state == "open" and previous != "open":
                now = args.now or datetime.now().time()
                if not is_dark(now, args.dark_after, args.dark_before):
                    print(f"{now:%H:%M} {args.door} opened; it is light: {args.light} left alone", flush=True)
                else:
                    try:
                        result = await pictl.call(f"{args.light}.on")
                    except RpcError as err:
                        print(f"{now:%H:%M} {args.door} opened in the dark; {args.light} did not come on: "
                              f"{err.message}", flush=True)
                    else:
                        print(f"{now:%H:%M} {args.door} opened in the dark: {args.light} on "
                              f"(confirmed in {result['elapsed_ms'] / 1000:.2f} s)", flush=True)
                        if args.once:
                            return 0
            previous = state
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except (ClientError, RpcError) as exc:
        sys.exit(f"light_after_dark: {exc}")
    except KeyboardInterrupt:
        sys.exit(0)
