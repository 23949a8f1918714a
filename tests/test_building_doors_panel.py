"""The doors on the wall panel in a real headless Chromium, at 800x480 and 390x844: Unlock with the relock
countdown and the alarm, Open/Close/Stop for the garage (Stop pressable while a call runs), a position
slider for the blind. panel.js draws them from each kind's own description (describe()["panel"]).

With PICTL_PANEL_SCREENSHOT=1 it writes docs/panel-doors-800x480.png and docs/panel-doors-390x844.png."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.browser import BROWSER_MISSING
from tests.conftest import on_browser_loop
from tests.doors import TOKEN, device, running
from tests.test_panel import open_panel, panel_url

if TYPE_CHECKING:
    from playwright.async_api import Browser

pytestmark = pytest.mark.skipif(BROWSER_MISSING is not None, reason=BROWSER_MISSING or "")

DOCS = Path(__file__).resolve().parent.parent / "docs"
DOORS = """
[devices.entrance]
kind = "lock"
strike = { gpio = 17 }
monitor = { gpio = 27, pull = "up" }
door_contact = { gpio = 22, pull = "up" }
hold_s = 5.0
timeout = 0.5

[devices.garage]
kind = "garage"
pulse = { gpio = 23 }
closed_contact = { gpio = 24, pull = "up" }
open_contact = { gpio = 25, pull = "up" }
pulse_s = 0.1
travel_s = 0.5
start_s = 0.2

[devices.blind]
kind = "cover"
up = { gpio = 5 }
down = { gpio = 6 }
open_endstop = { gpio = 13, pull = "up" }
closed_endstop = { gpio = 19, pull = "up" }
travel_s = 0.5
reverse_delay_s = 0.1
"""


@on_browser_loop  # the shared Chromium's (tests/conftest.py)
async def test_the_doors_tiles_unlock_with_a_countdown_stop_a_garage_and_set_a_blind(browser: Browser) -> None:
    async with running(DOORS) as daemon:
        assert daemon.plant is not None
        panel = await open_panel(browser, panel_url(daemon), token=TOKEN)
        page = panel.page
        await panel.live()
        entrance, garage, blind = panel.tile("entrance"), panel.tile("garage"), panel.tile("blind")
        await panel.state("entrance", "locked")

        # A door forced open: the alarm line, highlighted, until it shuts again.
        daemon.plant.inject("entrance", "forced")
        await page.locator(f"{entrance} .facts dd.alarm", has_text="Forced").wait_for(timeout=5000)
        daemon.plant.clear("entrance")
        await page.locator(f"{entrance} .facts dd.alarm").wait_for(state="detached", timeout=5000)

        # Unlock: confirmed by the monitor, then the countdown to the relock (the door is propped open).
        daemon.plant.inject("entrance", "propped")
        await panel.press("entrance", "unlock")
        assert "Unlocked — confirmed" in await panel.message("entrance", "ok")
        countdown = page.locator(f"{entrance} .facts dd", has_text=" s").first
        await countdown.wait_for(timeout=5000)
        assert 0 < int((await countdown.inner_text()).split()[0]) <= 5
        await page.locator(f"{entrance} .facts dd", has_text="Open").wait_for(timeout=5000)  # the door

        # The garage: Stop stays pressable while Open runs, and stops the door mid-way.
        await panel.press("garage", "open")
        await panel.state("garage", "opening")
        assert await page.locator(f'{garage} button[data-action="stop"]').is_enabled()
        assert await page.locator(f'{garage} button[data-action="close"]').is_disabled()
        await panel.press("garage", "stop")
        assert "Stopped — confirmed" in await panel.message("garage", "ok")
        await panel.state("garage", "stopped")

        # The blind: a position slider, and the position shown as it was estimated.
        await page.locator(f"{blind} input[type=range]").evaluate("(input) => { input.value = '40'; }")
        await panel.press("blind", "set_position")
        assert "Moved — confirmed" in await panel.message("blind", "ok")
        await page.locator(f"{blind} .facts dd", has_text="40 %").wait_for(timeout=5000)
        assert device(daemon, "blind").state()["position"] == 40

        for width, height in ((800, 480), (390, 844)):
            await page.set_viewport_size({"width": width, "height": height})
            overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{width}x{height}: {overflow} px wider than the screen"
            for tile in (entrance, garage, blind):
                box = await page.locator(f"{tile} .actions").bounding_box()
                assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width, (width, tile, box)
            if os.environ.get("PICTL_PANEL_SCREENSHOT"):  # only when asked: a test leaves no changes
                await page.screenshot(path=str(DOCS / f"panel-doors-{width}x{height}.png"), full_page=True)
        assert panel.errors == []
