"""The installer and the Pi example config, in a DESTDIR sandbox: files land below it, and
commands that would change this machine (useradd, pip, systemctl, ...) are printed, not run."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from controller.service import cli
from controller.service import configfile as config
from tests.conftest import ROOT, sim_daemon

EXAMPLE = ROOT / "config" / "example-pi.toml"


def script(name: str, destdir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    # The script asks apt-cache whether python3-lgpio exists (Raspberry Pi OS) to choose what it would
    # install. A stand-in answers as plain Debian's does ("no such package") without apt-cache's
    # 0.4 CPU-second of reading the package lists on every run.
    tools = destdir.parent / f"{destdir.name}-tools"
    tools.mkdir(exist_ok=True)
    (tools / "apt-cache").write_text("#!/bin/sh\necho 'E: No packages found' >&2\nexit 100\n")
    (tools / "apt-cache").chmod(0o755)
    environment = {"PATH": f"{tools}:/usr/sbin:/usr/bin:/sbin:/bin", "DESTDIR": str(destdir), "PYTHON": sys.executable,
                   **env}
    done = subprocess.run(["bash", str(ROOT / "scripts" / name), *args], capture_output=True, text=True,
                          env=environment, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_example_pi_config_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check-config", str(EXAMPLE)]) == 0
    assert capsys.readouterr().err == ""


async def test_example_pi_config_runs_on_the_simulated_plant() -> None:
    d = sim_daemon(config.load(str(EXAMPLE)))
    await d.start()
    try:
        assert {name: dev.state()["state"] for name, dev in d.devices.items()} == {
            "door": "closed", "hall_light": "off"}
        assert (await d.devices["door"].run("open", {}, 2.0))["state"] == "open"
    finally:
        await d.stop()


def test_install_writes_unit_and_config_with_fresh_secrets(tmp_path: Path) -> None:
    done = script("install.sh", tmp_path)
    unit = (tmp_path / "etc/systemd/system/pictl.service").read_text()
    assert "ExecStart=/opt/pictl/venv/bin/pictl serve --config /etc/pictl/config.toml" in unit
    cfg = tmp_path / "etc/pictl/config.toml"
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o640  # root:pictl, no one else
    text = cfg.read_text()
    printed = dict(re.findall(r"^  (\w+): (\S+)$", done.stdout, re.M))
    assert set(printed) == {"admin", "panel"} and printed["admin"] != printed["panel"]
    assert all(len(secret) >= 32 and secret not in text for secret in printed.values())  # hashes only
    assert cli.main(["check-config", str(cfg)]) == 0
    tokens = {t.name: t for t in config.load(str(cfg)).tokens}
    assert {name: t.role for name, t in tokens.items()} == {"admin": "admin", "panel": "panel"}
    assert all(tokens[name].verifier.matches(secret) for name, secret in printed.items())
    # Everything outside DESTDIR is only shown, one command per line (quoted as the shell needs).
    shown = [line.replace("\\", "") for line in done.stdout.splitlines() if line.startswith("would run: ")]
    if shutil.which("apt-get"):  # Debian: the venv module, and no lgpio package to be had
        assert "would run: apt-get install -y python3-venv" in shown
    for expected in ("usermod --append --groups gpio,dialout pictl",
                     f"{sys.executable} -m venv --system-site-packages /opt/pictl/venv",
                     f"chown root:pictl {cfg}.new", "systemctl daemon-reload", "systemctl enable pictl.service"):
        assert f"would run: {expected}" in shown, expected


def test_install_again_keeps_the_config_and_prints_no_secret(tmp_path: Path) -> None:
    script("install.sh", tmp_path)
    cfg = tmp_path / "etc/pictl/config.toml"
    edited = cfg.read_text().replace("timeout = 10.0", "timeout = 12.0")
    cfg.write_text(edited)
    again = script("install.sh", tmp_path)
    assert cfg.read_text() == edited
    assert "kept the existing /etc/pictl/config.toml" in again.stdout
    assert "tokens created" not in again.stdout


def test_install_prefix_points_the_unit_at_its_venv(tmp_path: Path) -> None:
    script("install.sh", tmp_path, PICTL_PREFIX="/srv/pictl")
    unit = (tmp_path / "etc/systemd/system/pictl.service").read_text()
    assert "ExecStart=/srv/pictl/venv/bin/pictl serve" in unit


def test_uninstall_keeps_config_unless_purged(tmp_path: Path) -> None:
    script("install.sh", tmp_path)
    done = script("uninstall.sh", tmp_path)
    assert not (tmp_path / "etc/systemd/system/pictl.service").exists()
    assert (tmp_path / "etc/pictl/config.toml").exists()
    assert "would run: systemctl disable --now pictl.service" in done.stdout
    purged = script("uninstall.sh", tmp_path, "--purge")
    assert not (tmp_path / "etc/pictl").exists() and "would run: userdel pictl" in purged.stdout
