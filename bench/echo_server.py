"""Baseline: a bare websockets server answering every frame with the reply pictl gives to system.ping."""

from __future__ import annotations

import asyncio
import json
import sys

from websockets.asyncio.server import serve


async def main(port: int) -> None:
    async def handler(ws):
        async for frame in ws:
            request = json.loads(frame)
            await ws.send(json.dumps({"jsonrpc": "2.0", "id": request.get("id"), "result": {"pong": True}},
                                     separators=(",", ":")))

    async with serve(handler, "127.0.0.1", port, compression=None, max_size=65536) as server:
        print(f"serving ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws", file=sys.stderr, flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
