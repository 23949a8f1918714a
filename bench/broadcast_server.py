"""Baseline for fan-out: a bare websockets server that, on any frame, broadcasts one event-sized
frame to every connection (websockets.broadcast, the library's own fastest path)."""

from __future__ import annotations

import asyncio
import json
import sys

from websockets.asyncio.server import broadcast, serve

EVENT = json.dumps({"jsonrpc": "2.0", "method": "event", "params": {
    "topic": "light.state", "seq": 1, "time": "2026-11-26T07:12:03.114Z",
    "data": {"state": "off", "since": "2026-11-26T07:12:03.114Z", "output": "on", "cause": "rpc"}}},
    separators=(",", ":"))


async def main() -> None:
    clients: set = set()

    async def handler(ws):
        clients.add(ws)
        try:
            async for _frame in ws:
                broadcast(clients, EVENT)
        finally:
            clients.discard(ws)

    async with serve(handler, "127.0.0.1", 0, compression=None, max_size=65536) as server:
        print(f"serving ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws", file=sys.stderr, flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())
