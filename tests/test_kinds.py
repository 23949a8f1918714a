"""A kind is its module plus one registry line (README, *Extending pictl*): a kind pictl has never
heard of, registered with one line, shows up in system.describe, in Home Assistant's MQTT discovery
(announced, commanded and reported by the real bridge on a real Mosquitto) and on the wall panel
(a real Chromium), with no front door knowing its name."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiomqtt
import pytest
import pytest_asyncio

from controller.devices import registry
from controller.devices.base import Action, Device, Outcome
from controller.devices.outward import HaEntity, word_command
from controller.devices.wiring import Wiring
from controller.service import configfile
from controller.service.daemon import Daemon
from controller.settings.devices import DeviceConfig, Loader, OutputSpec
from controller.settings.reader import Table
from controller.wire.clock import iso
from drivers.base import OutputPoint, PointSpec
from tests.browser import BROWSER_MISSING
from tests.conftest import ADMIN, DEMO_GPIO_TEXT, TIME_SCALE, Client, on_browser_loop, open_client
from tests.mosquitto import MOSQUITTO, Mosquitto
from tests.test_panel import open_panel, panel_url

if TYPE_CHECKING:
    from playwright.async_api import Browser


# -- the whole kind: one module's worth ------------------------------------------------------------
@dataclass(frozen=True)
class ChimeConfig(DeviceConfig):
    output: OutputSpec  # the chime's coil

    def specs(self) -> dict[str, PointSpec]:
        return {"output": self.output}


def read_config(name: str, t: Table, loader: Loader) -> ChimeConfig | None:
    common = loader.common(name, t, default_timeout=0.5)
    output = loader.binary_output(t, "output")
    if output is None or None in common.values():
        return None
    return ChimeConfig(**common, output=output)


class Chime(Device):
    """``ring`` pulses the coil once, confirmed by reading the output back."""

    kind = "chime"
    actions = {"ring": Action("sound the chime once")}

    def __init__(self, config: ChimeConfig, output: OutputPoint) -> None:
        self.output = output
        self.rings = 0
        super().__init__(config, [output])

    def state(self) -> dict[str, Any]:
        return {"state": "idle", "rings": self.rings, "since": iso(self.changed_at)}

    async def _perform(self, action: str, params: dict[str, Any], timeout: float, started: float) -> Outcome:
        await self.output.write(True)
        back = await self.output.write(False)
        self.rings += 1
        return Outcome("idle", True, {"source": self.output.readback_source, "value": back.value, "at": iso(back.at)})

    def ha_entities(self) -> list[HaEntity]:
        return [HaEntity("button", {"payload_press": "RING"}, topics={"command_topic": "set"})]

    def mqtt_command(self, leaf: str, text: str) -> tuple[str, dict[str, Any]]:
        return word_command({"RING": "ring"}, self.kind, text)

    def panel(self) -> dict[str, Any]:
        return {"proof": "read-back", "buttons": ["ring"], "facts": [{"field": "rings", "as": "text", "label": "Rung"}]}


def build(config: ChimeConfig, wiring: Wiring) -> Chime:
    return Chime(config, wiring.output(f"{config.name}.output", config.output, safe=False))


# -- registered with one line -------------------------------------------------------------------------
CHIME = '\n[devices.chime]\nkind = "chime"\noutput = { gpio = 5 }\n'
MQTT = '\n[auth.roles.automation]\nallow = ["chime.*", "*.state"]\n[mqtt]\nnode = "pi01"\nrole = "automation"\n'


# Its tests run on the shared Chromium's event loop (tests/conftest.py), and so does their daemon.
pytestmark = on_browser_loop


@pytest_asyncio.fixture(loop_scope="session")
async def chime_daemon(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AsyncIterator[Daemon]:
    monkeypatch.setitem(registry.REGISTRY, "chime", registry.Kind(read_config, build))  # the one line
    broker = Mosquitto(tmp_path) if MOSQUITTO else None
    text = DEMO_GPIO_TEXT + CHIME
    if broker is not None:
        await broker.start()
        text += MQTT + f'url = "{broker.url}"\n'
    daemon = Daemon(configfile.loads(text, "chime.toml"), simulate=True, host="127.0.0.1", port=0,
                    time_scale=TIME_SCALE)
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()
        if broker is not None:
            await broker.stop()


async def test_a_new_kind_is_described_and_called_like_any_other(chime_daemon: Daemon) -> None:
    async with open_client(chime_daemon.url) as ws:
        client = Client(ws)
        described = (await client.call("system.describe"))["devices"]["chime"]
        assert described["kind"] == "chime" and set(described["actions"]) == {"ring"}
        assert described["panel"]["buttons"] == ["ring"]
        result = await client.call("chime.ring")
        assert result["confirmed"] is True and result["evidence"]["source"] == "output-readback"
        assert (await client.call("chime.state"))["rings"] == 1
        await client.close()


@pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed (apt-get install mosquitto)")
async def test_the_mqtt_bridge_announces_and_commands_a_kind_it_has_never_heard_of(chime_daemon: Daemon) -> None:
    assert chime_daemon.mqtt is not None and chime_daemon.config.mqtt is not None
    await asyncio.wait_for(chime_daemon.mqtt.ready.wait(), 10)
    async with aiomqtt.Client("127.0.0.1", chime_daemon.config.mqtt.port, protocol=aiomqtt.ProtocolVersion.V5) as ha:
        await ha.subscribe("homeassistant/button/pi01/chime/config", qos=1)
        await ha.subscribe("pictl/pi01/chime/attributes", qos=1)
        async with asyncio.timeout(10):
            async for message in ha.messages:
                payload = json.loads(message.payload) if isinstance(message.payload, bytes) else {}
                if message.topic.matches("homeassistant/button/pi01/chime/config"):
                    assert payload["command_topic"] == "pictl/pi01/chime/set" and payload["payload_press"] == "RING"
                    assert payload["unique_id"] == "pictl_pi01_chime" and payload["device"]["name"] == "pi01"
                    await ha.publish("pictl/pi01/chime/set", b"RING", qos=1)  # Home Assistant's press
                elif payload.get("action") == "ring":
                    assert payload["confirmed"] is True
                    break
    assert chime_daemon.devices["chime"].state()["rings"] == 1


@pytest.mark.skipif(BROWSER_MISSING is not None, reason=BROWSER_MISSING or "")
async def test_the_panel_draws_a_kind_from_its_own_description(chime_daemon: Daemon, browser: Browser) -> None:
    panel = await open_panel(browser, panel_url(chime_daemon), token=ADMIN)
    await panel.live()
    tile = panel.tile("chime")
    await panel.page.wait_for_selector(f'{tile}[data-kind="chime"] .facts dd:text("0")', timeout=5000)
    await panel.press("chime", "ring")
    assert "confirmed" in await panel.message("chime", "ok")
    await panel.page.wait_for_selector(f'{tile} .facts dd:text("1")', timeout=5000)
    assert panel.errors == []
