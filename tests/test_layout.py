"""The house's rules (README "Layout"): every import points down, no circles, drivers know no
controller, and the client library stands without the daemon or any bus library."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import import_graph  # noqa: E402

# Lowest first: a package may import only packages before it in this list (and drivers).
LAYERS = ["controller.wire", "controller.security", "controller.settings", "controller.devices",
          "controller.rpc", "controller.runtime", "controller.http", "controller.bridges", "controller.fleet",
          "controller.service"]


def package_edges() -> set[tuple[str, str]]:
    return set(import_graph.package_edges(import_graph.graph()))


def test_no_import_circle_between_modules_or_packages() -> None:
    modules = import_graph.graph()
    assert import_graph.cycle(modules) is None
    packages: dict[str, set[str]] = {}
    for a, b in import_graph.package_edges(modules):
        packages.setdefault(a, set()).add(b)
    assert import_graph.cycle(packages) is None


def test_every_controller_import_points_down_the_layers() -> None:
    upward = [(a, b) for a, b in package_edges()
              if a in LAYERS and b in LAYERS and LAYERS.index(b) >= LAYERS.index(a)]
    assert upward == []


def test_drivers_know_no_controller_and_real_drivers_no_simulation() -> None:
    edges = package_edges()
    assert not [(a, b) for a, b in edges if a.startswith("drivers") and b.startswith("controller")]
    assert ("drivers", "drivers.sim") not in edges


def test_devices_import_no_front_door_and_no_websockets() -> None:
    edges = package_edges()
    fronts = ("controller.http", "controller.bridges", "controller.fleet", "controller.rpc")
    assert not [b for a, b in edges if a == "controller.devices" and b in fronts]
    for path in (ROOT / "controller" / "devices").glob("*.py"):
        assert "websockets" not in path.read_text(), path


def test_the_client_imports_only_the_protocol_table_and_the_backoff() -> None:
    modules = import_graph.graph()
    used = {target for source, targets in modules.items() if source.startswith("controller.client")
            for target in targets if not target.startswith("controller.client")}
    assert used == {"controller.wire.protocol", "drivers.backoff"}


def test_the_client_works_without_any_bus_library_or_daemon_module() -> None:
    # A script on a laptop: gpiozero, pymodbus and pyserial are not importable there.
    code = textwrap.dedent("""
        import sys
        class Missing:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("gpiozero", "pymodbus", "serial", "prometheus_client", "tomli", "orjson"):
                    raise ImportError(f"{name} is not installed here")
                return None
        sys.meta_path.insert(0, Missing())
        from controller.client import Client, SyncClient, NotConfirmed
        loaded = sorted(m for m in sys.modules if m.startswith(("controller", "drivers")))
        print(" ".join(loaded))
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    loaded = set(done.stdout.split())
    assert loaded <= {"controller", "controller.client", "controller.client.errors", "controller.client.link",
                      "controller.client.sync", "controller.wire", "controller.wire.protocol", "drivers",
                      "drivers.backoff"}, loaded
