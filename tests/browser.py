"""Debian's Chromium for the panel tests, driven by Playwright (its own browser download is not used).

One Playwright and one Chromium serve every browser test of a test process (each pytest-xdist worker
has its own): starting them cost about a second of CPU per test. They live on the session's event
loop (tests/conftest.py: ``browser_loop``), and each test gets a browser context of its own (storage
and cookies are not shared) that is closed after it.
"""

from __future__ import annotations

import os

CHROMIUM = os.environ.get("PICTL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

try:
    from playwright.async_api import async_playwright
except ImportError:  # pragma: no cover - the test extra installs it
    async_playwright = None  # type: ignore[assignment]

BROWSER_MISSING = None
if async_playwright is None:
    BROWSER_MISSING = "playwright is not installed (pip install -e '.[test]')"
elif not os.access(CHROMIUM, os.X_OK):
    BROWSER_MISSING = f"{CHROMIUM} is missing (apt install chromium)"
