"""The unit file as systemd reads it: `systemd-analyze verify` and the exposure score (CI runs these)."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from controller.http.admission import RESERVED_FDS, SPARE
from controller.service.supervision import STOP_MARGIN_S
from controller.settings.sections import ServerConfig
from tests.conftest import ROOT

UNIT = ROOT / "systemd" / "pictl.service"
INSTALLED_PICTL = "/opt/pictl/venv/bin/pictl"
MAX_EXPOSURE = 2.0
ANALYZE = shutil.which("systemd-analyze")

if ANALYZE is None:
    if os.environ.get("CI"):
        pytest.fail("systemd-analyze is missing: .ci/run installs the systemd package", pytrace=False)
    pytestmark = pytest.mark.skip(reason="systemd-analyze is not installed (apt install systemd)")


@pytest.fixture
def unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this venv's pictl: verify needs the binary to exist."""
    text = UNIT.read_text()
    assert f"ExecStart={INSTALLED_PICTL} " in text
    copy = tmp_path / "pictl.service"
    copy.write_text(text.replace(INSTALLED_PICTL, str(Path(sys.executable).parent / "pictl")))
    return copy


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=60, check=False)


def test_unit_verifies_clean(unit: Path) -> None:
    done = analyze("verify", str(unit))
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr


def test_verify_catches_a_broken_unit(unit: Path) -> None:
    # The check above can fail: a typo in a directive is reported.
    unit.write_text(unit.read_text().replace("WatchdogSec=", "WatchdogSecs="))
    done = analyze("verify", str(unit))
    assert "WatchdogSecs" in done.stderr


def test_exposure_score_is_at_most_2(unit: Path) -> None:
    done = analyze("security", "--offline=yes", str(unit))
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert match, done.stdout[-2000:] + done.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, done.stdout
    assert analyze("security", "--offline=yes", f"--threshold={int(MAX_EXPOSURE * 10)}", str(unit)).returncode == 0


def test_unit_keeps_what_the_daemon_relies_on() -> None:
    settings = {}
    for line in UNIT.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            settings.setdefault(key, []).append(value)
    assert settings["Type"] == ["notify"] and settings["NotifyAccess"] == ["main"]
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert "PrivateDevices" not in settings  # it would hide /dev/gpiochip*
    assert "char-gpiochip rw" in settings["DeviceAllow"]
    assert settings["Environment"][0] == "LG_WD=/run/pictl" and settings["RuntimeDirectory"] == ["pictl"]
    # Stop must outlast the default drain: 2 x max_timeout (30 s) + 1 s, plus closing.
    assert int(settings["TimeoutStopSec"][0]) >= 2 * 30 + 1 + STOP_MARGIN_S
    # Descriptors for every connection the default caps admit, the daemon's reserve and what it has open
    # at start (the listener counts connections from their accept and refuses past that): never EMFILE.
    default_connections = next(f.default for f in dataclasses.fields(ServerConfig) if f.name == "max_connections")
    assert int(settings["LimitNOFILE"][0]) >= default_connections + SPARE + 2 * RESERVED_FDS
