"""The wall panel as a newcomer meets it, in headless Chromium at 800x480 (a 7" screen) and 390x844
(a phone): a readable login header, a door that shows only what its contact said, messages that
do not move other tiles, read-only tiles that say so, no scrolling. Runs on the whole demo plant
(door, light, fan, hall_temp) with the demo's panel role, which may not act on the fan or the sensor.
With PICTL_PANEL_SCREENSHOT set, it writes docs/panel-*.png (README shows them)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from controller.service.daemon import Daemon
from tests.conftest import ROOT, TEST_TEXT, Client, daemon_fixtures, failing_fast, on_browser_loop
from tests.test_panel import Panel, needs_browser, open_panel, panel_url

daemon, admin, panel = daemon_fixtures("session")  # on the shared Chromium's loop (tests/conftest.py)

SIZES = ({"width": 800, "height": 480}, {"width": 390, "height": 844})
DOCS = ROOT / "docs"

# WCAG 2.x contrast of an element's text against what is really behind it: the colours come from the
# computed styles; backgrounds are composited up the ancestors (alpha included), and a text covered
# by another element (an overlay) is measured through that element's background.
CONTRAST_JS = """
(selector) => {
  const parse = (c) => {
    const m = c.match(/[\\d.]+/g).map(Number);
    return [m[0], m[1], m[2], m.length > 3 ? m[3] : 1];
  };
  const over = (top, under) => [0, 1, 2].map((i) => top[i] * top[3] + under[i] * (1 - top[3])).concat(1);
  // CSS opacity fades an element with everything in it: a colour's alpha times every enclosing opacity.
  const faded = (c, node) => {
    let alpha = c[3];
    for (let n = node; n; n = n.parentElement) alpha *= parseFloat(getComputedStyle(n).opacity);
    return [c[0], c[1], c[2], alpha];
  };
  const behind = (node) => {
    const layers = [];
    for (let n = node; n; n = n.parentElement) layers.push(faded(parse(getComputedStyle(n).backgroundColor), n));
    let colour = [255, 255, 255, 1];
    for (const layer of layers.reverse()) colour = over(layer, colour);
    return colour;
  };
  const channel = (v) => (v / 255 <= 0.03928 ? v / 255 / 12.92 : ((v / 255 + 0.055) / 1.055) ** 2.4);
  const lum = (c) => 0.2126 * channel(c[0]) + 0.7152 * channel(c[1]) + 0.0722 * channel(c[2]);
  const el = document.querySelector(selector);
  const box = el.getBoundingClientRect();
  let text = over(faded(parse(getComputedStyle(el).color), el), behind(el));
  const top = document.elementFromPoint(box.left + box.width / 2, box.top + box.height / 2);
  const covered = top && !el.contains(top) && !top.contains(el);
  if (covered) text = over(parse(getComputedStyle(top).backgroundColor), text);
  const back = covered ? over(parse(getComputedStyle(top).backgroundColor), behind(el)) : behind(el);
  const [a, b] = [lum(text), lum(back)].sort((x, y) => y - x);
  return { ratio: (a + 0.05) / (b + 0.05), covered: !!covered, text: el.textContent.trim() };
}
"""


async def buttons(panel: Panel) -> dict[str, dict[str, float]]:
    """Every action button's bounding box, by device.action."""
    found = await panel.page.eval_on_selector_all(
        ".tile button[data-action]",
        "bs => bs.map(b => [b.closest('.tile').dataset.device + '.' + b.dataset.action, "
        "b.getBoundingClientRect().toJSON()])")
    return {name: {k: box[k] for k in ("x", "y", "width", "height")} for name, box in found}


async def scroll_size(panel: Panel) -> list[int]:
    return await panel.page.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")


async def screenshot(panel: Panel, name: str) -> None:
    if os.environ.get("PICTL_PANEL_SCREENSHOT"):
        await panel.page.screenshot(path=str(DOCS / name))


@needs_browser
@on_browser_loop
async def test_the_login_header_is_readable_over_the_token_question(daemon: Daemon, browser: Any) -> None:
    for size in SIZES:
        panel = await open_panel(browser, panel_url(daemon), token=None, viewport=size)
        await panel.page.wait_for_selector("#login:not([hidden])")
        for selector in (".bar h1", "#link", "#login-form h2", "#login-form p", "#login-form label"):
            measured = await panel.page.evaluate(CONTRAST_JS, selector)
            assert measured["ratio"] >= 4.5 and not measured["covered"], (size, selector, measured)
        assert await panel.page.locator("#link").inner_text() == "Not connected"
        await screenshot(panel, f"panel-login-{size['width']}x{size['height']}.png")
        await panel.page.context.close()


@needs_browser
@on_browser_loop
async def test_a_jammed_door_says_it_waits_for_the_contact_and_never_shows_moving(
        daemon: Daemon, browser: Any, admin: Client) -> None:
    panel = await open_panel(browser, panel_url(daemon))
    page = panel.page
    await panel.live()
    await panel.state("door", "closed")
    # Every text the door's value shows from now on.
    await page.evaluate("""() => {
        const value = document.querySelector('.tile[data-device="door"] .value');
        window.doorShown = [value.textContent];
        new MutationObserver(() => window.doorShown.push(value.textContent))
            .observe(value, {childList: true, characterData: true, subtree: true});
    }""")
    await admin.call("sim.fault", {"device": "door", "fault": "jammed"})
    await panel.press("door", "open")
    assert await panel.message("door", "progress") == "Opening, waiting for the contact"
    assert await page.locator(panel.tile("door")).get_attribute("data-moving") == "opening"
    await screenshot(panel, "panel-door-jammed-800x480.png")
    error = await panel.message("door", "error", timeout=6000)
    assert error.startswith("door did not open — contact still closed")
    assert set(await page.evaluate("window.doorShown")) == {"Closed"}  # never "Moving…": it never moved
    # Another client's command shows the same way: what the contact says, and what is awaited.
    await admin.call("sim.clear", {"device": "door"})
    await admin.call("door.open")
    await panel.state("door", "open")
    await admin.call("sim.fault", {"device": "door", "fault": "jammed"})
    closing = asyncio.create_task(admin.request("door.close", {"timeout": 0.5}))
    await page.locator(f'{panel.tile("door")} .msg', has_text="Closing, waiting for the contact").wait_for(timeout=3000)
    assert await page.locator(f'{panel.tile("door")} .value').inner_text() == "Open"
    assert "error" in await closing
    await page.wait_for_selector(f'{panel.tile("door")}[data-moving=""]', timeout=3000)
    assert "Moving" not in "".join(await page.evaluate("window.doorShown"))
    assert panel.errors == []


@needs_browser
@on_browser_loop
async def test_the_whole_demo_plant_fits_both_screens(daemon: Daemon, browser: Any, admin: Client) -> None:
    for method in ("door.open", "light.on", "fan.on"):
        await admin.call(method)
    for size in SIZES:
        panel = await open_panel(browser, panel_url(daemon), token="demo-admin", viewport=size)
        await panel.live()
        for device, state in (("door", "open"), ("light", "on"), ("fan", "on"), ("hall_temp", "value")):
            await panel.state(device, state)
        assert await scroll_size(panel) == [size["width"], size["height"]], size
        boxes = await buttons(panel)
        assert len(boxes) == 8 and all(box["height"] >= 48 and box["width"] >= 80 for box in boxes.values()), boxes
        await screenshot(panel, f"panel-{size['width']}x{size['height']}.png")
        assert panel.errors == []
        await panel.page.context.close()


@needs_browser
@on_browser_loop
@pytest.mark.long
@pytest.mark.parametrize("demo_config", [failing_fast(TEST_TEXT)], ids=["failing fast"])
async def test_errors_do_not_move_other_tiles_read_only_tiles_say_so_and_nothing_scrolls(
        daemon: Daemon, browser: Any, admin: Client) -> None:
    await admin.call("sim.fault", {"device": "door", "fault": "jammed"})
    await admin.call("sim.fault", {"device": "light", "fault": "no_feedback"})
    for size in SIZES:
        label = f"{size['width']}x{size['height']}"
        panel = await open_panel(browser, panel_url(daemon), viewport=size)
        page = panel.page
        await panel.live()
        await page.wait_for_selector(f'{panel.tile("hall_temp")}[data-state="value"]', timeout=5000)
        # The panel role may not act on the fan or read the sensor: their tiles say so.
        for device in ("fan", "hall_temp"):
            note = page.locator(f"{panel.tile(device)} .readonly")
            assert await note.count() == 1 and await note.text_content() == "read only", (label, device)
            assert await page.locator(f"{panel.tile(device)} button").count() == 0
        assert await page.locator(f'{panel.tile("door")} .readonly').count() == 0
        before = await buttons(panel)
        tiles_before = {d: await page.locator(panel.tile(d)).bounding_box() for d in ("fan", "hall_temp")}
        assert await scroll_size(panel) == [size["width"], size["height"]], label
        await screenshot(panel, f"panel-role-{label}.png")
        # Two long errors (door and light, the longest the panel writes) under their tiles.
        await panel.press("door", "open")
        await panel.press("light", "on")
        assert "Actuator released" in await panel.message("door", "error", timeout=6000)
        assert "safe state" in await panel.message("light", "error", timeout=4000)
        after = await buttons(panel)
        assert after == before, label  # no button anywhere moved (or changed size)
        for device, box in tiles_before.items():
            assert await page.locator(panel.tile(device)).bounding_box() == box, (label, device)
        assert await scroll_size(panel) == [size["width"], size["height"]], label
        # Each message is whole (two lines at most), not cut.
        for device in ("door", "light"):
            clipped = await page.eval_on_selector(f"{panel.tile(device)} .msg", "m => m.scrollHeight > m.clientHeight")
            assert not clipped, (label, device)
        await screenshot(panel, f"panel-errors-{label}.png")
        if size["width"] < size["height"]:  # one column: a device going offline moves nothing below it either
            await admin.call("sim.fault", {"device": "fan", "fault": "offline"})
            await page.wait_for_selector(f'{panel.tile("fan")}[data-online="false"]', timeout=5000)
            assert (await page.locator(f'{panel.tile("fan")} .msg').inner_text()).startswith("Modbus plant: no reply")
            for part in ("h2", ".kind", ".value", ".offline-note", ".msg", ".readonly"):  # greyed, still readable (AA)
                measured = await page.evaluate(CONTRAST_JS, f'{panel.tile("fan")} {part}')
                assert measured["ratio"] >= 4.5, (part, measured)
            assert await buttons(panel) == before
            assert await page.locator(panel.tile("hall_temp")).bounding_box() == tiles_before["hall_temp"]
            await admin.call("sim.clear", {"device": "fan"})
        assert panel.errors == []
        await page.context.close()
