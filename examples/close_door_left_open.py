#!/usr/bin/env python3
"""Close the door if it stays open longer than N seconds.

    PICTL_TOKEN=... python examples/close_door_left_open.py --after 120

The timer starts when the door is seen open (also at start-up, if it already is) and is cancelled
when it closes. If the close is not confirmed (someone is standing in the door: -32002), it says
so and tries again after another N seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from controller.client import Client, ClientError, RpcError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--door", default="door", help="the door device (default: door)")
    p.add_argument("--after", type=float, default=120.0, help="seconds the door may stay open (default 120)")
    p.add_argument("--once", action="store_true", help="exit after closing the door once")
    p.add_argument("--url", default=os.environ.get("PICTL_URL", "ws://127.0.0.1:8765/ws"))
    p.add_argument("--token", default=os.environ.get("PICTL_TOKEN"))
    return p


async def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    closed_once = asyncio.Event()

    async with Client(args.url, args.token) as pictl:
        stream = await pictl.events(f"{args.door}.state").start()
        print(f"watching {args.door}: closing it after {args.after:g} s open", file=sys.stderr, flush=True)
        timer: asyncio.Task[None] | None = None  # sleeping until it is time to close
        running: set[asyncio.Task[None]] = set()  # keeps the timers' tasks alive to their end

        def seen(state: str) -> None:
            nonlocal timer
            if state == "open" and timer is None:
                timer = asyncio.create_task(close_later())
                running.add(timer)
                timer.add_done_callback(running.discard)
            elif state != "open" and timer is not None:
                timer.cancel()
                timer = None

        async def close_later() -> None:
            nonlocal timer
            await asyncio.sleep(args.after)
            timer = None  # from here on the close runs to its end, whatever events say meanwhile
            try:
                result = await pictl.call(f"{args.door}.close")
            except RpcError as err:
                print(f"{args.door} open for {args.after:g} s; closing it failed: {err.message}", flush=True)
                seen((await pictl.call(f"{args.door}.state"))["state"])  # still open: try again later
                return
            print(f"{args.door} open for {args.after:g} s: closed (confirmed in "
                  f"{result['elapsed_ms'] / 1000:.2f} s)", flush=True)
            closed_once.set()

        seen((await pictl.call(f"{args.door}.state"))["state"])
        events = asyncio.create_task(anext(stream))
        done_waiter = asyncio.create_task(closed_once.wait())
        try:
            while True:
                finished, _ = await asyncio.wait({events, done_waiter}, return_when=asyncio.FIRST_COMPLETED)
                if done_waiter in finished:
                    if args.once:
                        return 0
                    closed_once.clear()
                    done_waiter = asyncio.create_task(closed_once.wait())
                if events in finished:
                    event = events.result()
                    if event.is_resync:
                        seen(event.data["devices"][args.door]["state"]["state"])
                    else:
                        seen(event.data["state"])
                    events = asyncio.create_task(anext(stream))
        finally:
            for task in (events, done_waiter, timer):
                if task is not None:
                    task.cancel()


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except (ClientError, RpcError) as exc:
        sys.exit(f"close_door_left_open: {exc}")
    except KeyboardInterrupt:
        sys.exit(0)
