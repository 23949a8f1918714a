"""A config with GPIO devices, run without --simulate on a machine without GPIO: one clear line and
exit 1 at once (which devices, why, and that --simulate exists), never a traceback; a config without
GPIO devices does not load a pin factory at all. And the pin factory is chosen as gpiozero
documents: the [gpio] factory setting, else GPIOZERO_PIN_FACTORY, else gpiozero's own order."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from controller.service import configfile
from controller.service.daemon import Daemon
from drivers import gpio
from tests.conftest import DEMO
from tests.crossbar import free_port

HAS_GPIO = bool(list(Path("/dev").glob("gpiochip*"))) or Path("/proc/device-tree").exists()


@pytest.mark.skipif(HAS_GPIO, reason="this machine has GPIO: serving the demo for real would drive its pins")
def test_serving_the_demo_without_gpio_fails_at_once_with_one_clear_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "GPIOZERO_PIN_FACTORY"}
    done = subprocess.run([sys.executable, "-m", "controller.service.cli", "serve", "--config", str(DEMO),
                           "--listen", "127.0.0.1:0"], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=30, check=False)
    lines = done.stderr.strip().splitlines()
    assert (done.returncode, done.stdout, len(lines)) == (1, "", 1), done.stderr
    line = lines[0]
    assert line.startswith("pictl serve: door and light use GPIO, but this machine has no GPIO: "
                           "no /dev/gpiochip*, no /proc/device-tree (lgpio: "), line
    assert "python3-lgpio" in line and "run with --simulate" in line and "Traceback" not in line


def test_the_pin_factory_follows_gpiozero_pin_factory_unless_the_config_names_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpio, "_factories", {})
    monkeypatch.setattr(Device, "pin_factory", None)
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    chosen = gpio.load_pin_factory("auto")
    assert isinstance(chosen, MockFactory) and gpio.load_pin_factory("auto") is chosen
    chosen.close()
    monkeypatch.setattr(Device, "pin_factory", None)
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "nonesuch")
    with pytest.raises(gpio.GpioUnavailable, match=r"\(GPIOZERO_PIN_FACTORY=nonesuch: .*'nonesuch'\)"):
        gpio.load_pin_factory("auto")
    named = gpio.load_pin_factory("mock")  # the [gpio] factory setting wins over the environment
    assert isinstance(named, MockFactory) and gpio.load_pin_factory("mock") is named
    named.close()


async def test_a_config_without_gpio_devices_starts_without_a_pin_factory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "nonesuch")  # loading one would fail
    demo = DEMO.read_text()
    link = demo[demo.index("[modbus.plant]"):].split("\n\n")[0].replace("port = 5020", f"port = {free_port()}")
    devices = '[devices.fan]\nkind = "switch"\noutput = { modbus = "plant", coil = 0 }\ntimeout = 0.3\n'
    # The demo's server and tokens, its Modbus link pointed where nothing answers, and one Modbus device.
    cfg = configfile.loads(demo.split("[devices.door]")[0] + link + "\n\n" + devices, str(DEMO))
    daemon = Daemon(cfg, simulate=False, host="127.0.0.1", port=0)
    await daemon.start()
    try:
        assert daemon.devices["fan"].online is False and daemon.gpio is not None and daemon.gpio._factory is None
    finally:
        await daemon.stop()
