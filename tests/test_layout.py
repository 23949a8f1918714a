"""The house's rules (README "Layout"): every import points down, no circles, drivers know no
controller, and the client library stands without the daemon or any bus library."""

from __future__ import annotations

import re
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


FRONT_DOORS = ("controller.http", "controller.bridges", "controller.fleet")


def test_each_front_door_has_a_room_of_its_own() -> None:
    edges = package_edges()
    # The listener and the bridges know nothing of each other; the fleet is built from both
    # (the WAMP link to reach the nodes, the listener to serve its panel).
    assert not [(a, b) for a, b in edges if a == "controller.http" and b in ("controller.bridges", "controller.fleet")]
    assert not [(a, b) for a, b in edges if a == "controller.bridges" and b in ("controller.http", "controller.fleet")]
    modules = import_graph.graph()
    mqtt_wamp = [(a, b) for a, targets in modules.items() for b in targets
                 if {a.split(".")[2:3][0] if a.startswith("controller.bridges.") else "",
                     b.split(".")[2:3][0] if b.startswith("controller.bridges.") else ""} == {"mqtt", "wamp"}]
    assert mqtt_wamp == []
    # The Crossbar launcher is a test tool: it does not ship in the wheel.
    assert not list((ROOT / "controller").rglob("crossbar*.py")) and not list((ROOT / "drivers").rglob("crossbar*"))


def test_the_rpc_layer_and_the_runtime_import_no_simulator() -> None:
    edges = package_edges()
    assert not [(a, b) for a, b in edges if a in ("controller.rpc", "controller.runtime") and b == "drivers.sim"]


def test_only_the_dispatcher_writes_its_method_table() -> None:
    """Handlers enter through Dispatcher.register, requests through Dispatcher.call: nothing else
    reaches into the table."""
    for path in (ROOT / "controller").rglob("*.py"):
        if path.name == "dispatch.py" and path.parent.name == "rpc":
            continue
        text = path.read_text()
        assert "._table" not in text and ".methods[" not in text and ".instant" not in text, path


def test_no_front_door_names_a_kind() -> None:
    """A kind maps itself outward (Home Assistant, MQTT payloads and commands, the panel): the
    front doors import no kind module and compare no kind names."""
    kinds = {p.stem for p in (ROOT / "controller" / "devices").glob("*.py")} - {
        "__init__", "base", "outward", "registry", "wiring"}
    modules = import_graph.graph()
    for source, targets in modules.items():
        if source.startswith((*FRONT_DOORS, "controller.rpc", "controller.runtime")):
            named = {t for t in targets if t.startswith("controller.devices.") and t.rpartition(".")[2] in kinds}
            assert not named, (source, named)
    panel_js = (ROOT / "controller" / "http" / "panel" / "panel.js").read_text()
    panel_js = re.sub(r"""\bel\((["'])\w+\1""", "el(TAG", panel_js)  # an element's tag is no kind ("input")
    for kind in kinds:
        assert f'"{kind}"' not in panel_js and f"'{kind}'" not in panel_js, kind
    for path in [p for door in ("http", "bridges", "fleet") for p in (ROOT / "controller" / door).rglob("*.py")]:
        assert "kind ==" not in path.read_text() and ".kind in" not in path.read_text(), path


def test_no_module_is_over_500_lines() -> None:
    long = [(str(p.relative_to(ROOT)), n) for top in ("controller", "drivers") for p in (ROOT / top).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500]
    assert long == []
