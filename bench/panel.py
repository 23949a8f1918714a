"""The wall panel's page weight and time to first tile, in headless Chromium on the demo plant.

    .venv/bin/python bench/panel.py             # 20 loads
    .venv/bin/python bench/panel.py --loads 5

Page weight: the bytes of every panel file (all of them load; nothing else is fetched). Time to
first tile: from navigation start to the moment the first device tile is in the page (the panel's
``pictl-first-tile`` performance mark: page, script, WebSocket, session.auth, system.describe),
with the token already stored, as on a wall panel after its first login. Each load is a fresh
browser context (cold cache); the daemon is ``pictl serve --simulate`` in a child process.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import time
from pathlib import Path

from playwright.async_api import async_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from controller.http.static import StaticFiles  # noqa: E402

PICTL = str(Path(sys.executable).parent / "pictl")
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loads", type=int, default=20)
    loads = ap.parse_args().loads
    files = StaticFiles()
    proc = await asyncio.create_subprocess_exec(
        PICTL, "serve", "--config", str(ROOT / "config" / "demo.toml"), "--simulate", "--listen", "127.0.0.1:0",
        stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    try:
        while True:
            line = (await proc.stderr.readline()).decode()
            if not line:
                raise SystemExit("pictl serve exited")
            match = re.search(r"serving ws://([^/\s]+)/ws", line)
            if match:
                break
        url = f"http://{match.group(1)}/"
        marks, walls, transferred = [], [], []
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            for _ in range(loads):
                context = await browser.new_context(viewport={"width": 800, "height": 480})
                await context.add_init_script("localStorage.setItem('pictl.token', 'demo-panel')")
                page = await context.new_page()
                started = time.perf_counter()
                await page.goto(url)
                await page.wait_for_selector(".tile", state="visible")
                walls.append((time.perf_counter() - started) * 1000)
                marks.append(await page.evaluate("performance.getEntriesByName('pictl-first-tile')[0].startTime"))
                transferred.append(await page.evaluate(
                    "performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))"
                    ".reduce((n, e) => n + e.encodedBodySize, 0)"))
                await context.close()
            version = browser.version
            await browser.close()
    finally:
        proc.terminate()
        await proc.wait()
    print(f"Chromium {version}, {loads} cold loads, viewport 800x480")
    print(f"page weight: {files.total_bytes} bytes in {len(files.files)} files "
          f"({', '.join(f'{n} {len(f.body)}' for n, f in sorted(files.files.items()))}); "
          f"fetched per load: {int(statistics.median(transferred))} bytes")
    q = statistics.quantiles(marks, n=20) if len(marks) > 1 else marks * 19
    print(f"time to first tile: median {statistics.median(marks):.0f} ms, p95 {q[18]:.0f} ms, "
          f"min {min(marks):.0f} ms (navigation start to tile; goto to visible, wall-clock: "
          f"median {statistics.median(walls):.0f} ms)")


if __name__ == "__main__":
    asyncio.run(main())
