"""The package as pip builds it: quiet (no setuptools deprecation banners before `make demo`'s
first line) and complete (the wall panel's files are in the wheel)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

# What is not the project's: a copy of the tree to build from leaves these out.
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", ".venv-crossbar", "__pycache__", "*.egg-info", "build", "dist",
                                    ".pytest_cache", ".ruff_cache", ".hypothesis", ".mypy_cache")


def pip(*args: str) -> str:
    """Run pip verbosely (the build backend's output included); fail on any setuptools banner."""
    command = [sys.executable, "-m", "pip", *args, "--no-deps", "--verbose", "--disable-pip-version-check"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    # setuptools' banners: "SetuptoolsDeprecationWarning: ..." / "_Warning: Package ... is absent" /
    # "BuildBackendWarning: Editable installation.", each framed by "!!".
    banners = [line for line in log.splitlines() if "Warning:" in line or line.strip() == "!!"]
    assert banners == [], "\n".join(banners)
    return log


@pytest.mark.long
def test_an_editable_install_as_make_does_it_is_quiet(tmp_path: Path) -> None:
    pip("install", "-e", str(ROOT), "--target", str(tmp_path))  # --target: the test's venv is left alone
    (pth,) = tmp_path.glob("__editable__.pictl-*.pth")
    assert pth.read_text().strip() == str(ROOT)


@pytest.mark.long
def test_the_wheel_builds_without_warnings_and_carries_the_panel(tmp_path: Path) -> None:
    # From a copy: a build writes build/ and *.egg-info into its source tree, where the editable install
    # above (perhaps at the same time, on another pytest-xdist worker) writes too.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    pip("wheel", "-w", str(tmp_path), str(source))
    (wheel,) = tmp_path.glob("pictl-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    panel = {n.rsplit("/", 1)[-1] for n in names if "/panel/" in n}
    assert {"index.html", "panel.css", "panel.js"} <= panel
    assert any(n.endswith("drivers/sim/plant.py") for n in names)
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    assert "License-Expression: MIT" in zipfile.ZipFile(wheel).read(metadata).decode()


def test_what_a_user_reads_points_only_at_what_the_repository_has() -> None:
    """No "CONTRACT §N" (a design document users do not get) and no "future" features in the code,
    the configs and the nginx snippet; every relative link in README resolves."""
    where = [*ROOT.glob("controller/**/*.py"), *ROOT.glob("drivers/**/*.py"), *ROOT.glob("config/*.toml"),
             *ROOT.glob("controller/**/panel/*"), *ROOT.glob("tests/*.py"), *ROOT.glob("examples/*.py"),
             *ROOT.glob("systemd/*"), ROOT / "README.md", ROOT / "hardware.md", ROOT / "Makefile"]
    this = Path(__file__).resolve()
    for path in where:
        if path.resolve() == this:
            continue
        text = path.read_text()
        assert "CONTRACT" not in text and "ARCHITECTURE.md" not in text, path
        if path.parent.name == "systemd":
            assert "future" not in text.lower(), path
    readme = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", readme):
        assert (ROOT / target).exists(), target
