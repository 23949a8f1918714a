"""Debian's Chromium for the panel tests, started once per test process (each pytest-xdist worker
has its own) and reached by each test over the DevTools protocol with a Playwright of its own, bound
to that test's event loop, in a browser context of its own (storage and cookies are not shared).

Launching Chromium for every test cost about a second of two CPUs' time each; connecting costs a
few milliseconds. Playwright's own browser download is not used.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading

CHROMIUM = os.environ.get("PICTL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
START_DEADLINE_S = 30.0

try:
    from playwright.async_api import async_playwright
except ImportError:  # pragma: no cover - the test extra installs it
    async_playwright = None  # type: ignore[assignment]

BROWSER_MISSING = None
if async_playwright is None:
    BROWSER_MISSING = "playwright is not installed (pip install -e '.[test]')"
elif not os.access(CHROMIUM, os.X_OK):
    BROWSER_MISSING = f"{CHROMIUM} is missing (apt install chromium)"


class SharedChromium:
    """One headless Chromium process with a DevTools endpoint; started on first use, again if it died."""

    def __init__(self) -> None:
        self.profile = tempfile.mkdtemp(prefix="pictl-chromium-")
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.log: list[str] = []  # its stderr, kept for a failure message

    def endpoint(self) -> str:
        """The DevTools WebSocket URL of a running Chromium."""
        if self.process is None or self.process.poll() is not None:
            self._start()
        return self.url

    def _start(self) -> None:
        process = subprocess.Popen(
            [CHROMIUM, *CHROMIUM_ARGS, "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
             f"--user-data-dir={self.profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        found: queue.Queue[str] = queue.Queue()

        def read() -> None:  # for as long as it runs: a full pipe would stall it
            assert process.stderr is not None
            for raw in process.stderr:
                line = raw.decode(errors="replace")
                self.log.append(line)
                match = re.search(r"DevTools listening on (ws://\S+)", line)
                if match:
                    found.put(match.group(1))
            found.put("")

        threading.Thread(target=read, name="chromium stderr", daemon=True).start()
        self.process = process
        try:
            url = found.get(timeout=START_DEADLINE_S)
        except queue.Empty:
            url = ""
        if not url:
            self.close()
            raise RuntimeError("chromium did not open its DevTools endpoint: " + "".join(self.log[-20:]))
        self.url = url

    def close(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        shutil.rmtree(self.profile, ignore_errors=True)
