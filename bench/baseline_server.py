"""The baseline: a bare websockets server doing the least pictl's work could be.

Every text frame is parsed as JSON and answered with the exact reply pictl
gives to ``system.ping``; the frame ``go`` instead broadcasts one event-sized
notification to every connection with ``websockets.broadcast``. Same library,
same limits (no compression, 64 KiB frames), nothing else.
"""

from __future__ import annotations

import asyncio
import json
import sys

from websockets.asyncio.server import broadcast, serve

EVENT = json.dumps({"jsonrpc": "2.0", "method": "event", "params": {
    "topic": "light.state", "seq": 1, "time": "2026-11-26T07:12:03.114Z",
    "data": {"state": "on", "since": "2026-11-26T07:12:03.114Z", "output": "off", "cause": "rpc"}}},
    separators=(",", ":"))


async def main() -> None:
    clients: set = set()

    async def handler(ws):
        clients.add(ws)
        try:
            async for frame in ws:
                if frame == "go":
                    broadcast(clients, EVENT)
                    continue
                request = json.loads(frame)
                await ws.send(json.dumps({"jsonrpc": "2.0", "id": request.get("id"), "result": {"pong": True}},
                                         separators=(",", ":")))
        finally:
            clients.discard(ws)

    async with serve(handler, "127.0.0.1", 0, compression=None, max_size=65536) as server:
        print(f"serving ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws", file=sys.stderr, flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())
