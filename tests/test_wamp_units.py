"""The WAMP side without a router: the [wamp] table, the error mappings, the fleet view's bookkeeping,
and `pictl aggregate`'s usage errors (issue 15). tests/test_wamp.py runs the real thing."""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.service import configfile
from controller.service.cli import main
from controller.settings.reader import ConfigError
from tests.conftest import DEMO, DEMO_GPIO_TEXT

WAMP = '\n[wamp]\nurl = "ws://127.0.0.1:8080/ws"\nrealm = "building"\nnode = "pi01"\nrole = "panel"\n'


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        configfile.loads(DEMO_GPIO_TEXT + text, str(DEMO))
    return [str(p) for p in caught.value.problems]


def test_a_wamp_table_is_read_into_its_settings() -> None:
    cfg = configfile.loads(DEMO_GPIO_TEXT + WAMP, str(DEMO))
    assert cfg.wamp is not None
    assert (cfg.wamp.url, cfg.wamp.realm, cfg.wamp.node, cfg.wamp.role) == (
        "ws://127.0.0.1:8080/ws", "building", "pi01", "panel")
    assert cfg.wamp.prefix == "pictl.pi01." and cfg.wamp.authid is None and cfg.wamp.max_retry_delay == 10.0
    assert configfile.loads(DEMO_GPIO_TEXT, str(DEMO)).wamp is None


@pytest.mark.parametrize(("change", "phrase"), [
    (("ws://127.0.0.1:8080/ws", "http://router/ws"), "wamp.url: 'http://router/ws' is not a ws:// or wss:// URL"),
    (('node = "pi01"', 'node = "fleet"'), "wamp.node: node must be 1-64 of letters"),
    (('node = "pi01"', 'node = "pi.01"'), "wamp.node: node must be 1-64 of letters"),
    (('role = "panel"', 'role = "nobody"'), "wamp.role: no role named 'nobody' in [auth.roles]"),
    (('realm = "building"', 'realm = "a b"'), "wamp.realm: realm must be"),
    (('role = "panel"', 'role = "panel"\nauthid = "pi01"'), "wamp.ticket_file: authid and ticket_file go together"),
    (('role = "panel"', 'role = "panel"\nretry = 3'), "wamp.retry: unknown field"),
])
def test_a_bad_wamp_table_names_its_line_and_field(change: tuple[str, str], phrase: str) -> None:
    found = problems(WAMP.replace(*change))
    assert any(phrase in p for p in found), found
    assert all(p.startswith(f"{DEMO}:") for p in found)


@pytest.mark.parametrize(("content", "mode", "phrase"), [
    ("a-long-enough-ticket", 0o644, "readable by group or others"),
    ("short", 0o600, "shorter than 16 characters"),
])
def test_bad_ticket_files(tmp_path: Path, content: str, mode: int, phrase: str) -> None:
    ticket = tmp_path / "ticket"
    ticket.write_text(content)
    ticket.chmod(mode)
    found = problems(WAMP + f'authid = "pi01"\nticket_file = "{ticket}"\n')
    assert any(phrase in p and "wamp.ticket_file" in p for p in found), found


def test_check_config_reads_a_wamp_table_without_importing_autobahn(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(DEMO_GPIO_TEXT + WAMP)
    code = ("import sys; from controller.service.cli import main; rc = main(['check-config', sys.argv[1]]); "
            "print(rc, 'autobahn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    assert out.stdout.split()[-2:] == ["0", "False"], out.stderr


@contextlib.contextmanager
def logging_left_as_it_was() -> Iterator[None]:
    """main() sets up logging for a process of its own (a stderr handler, the websockets library at
    WARNING): undone after, or a later test in this process (tests/test_fuzz.py reads the library's
    DEBUG lines) would depend on whether this one ran first."""
    root, library = logging.getLogger(), logging.getLogger("websockets")
    handlers, levels = list(root.handlers), (root.level, library.level)
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(levels[0])
        library.setLevel(levels[1])  # setLevel, not an assignment: it clears logging's level cache


@pytest.mark.parametrize(("argv", "phrase"), [
    (["--wamp", "http://x", "--realm", "r"], "--wamp: 'http://x' is not a ws:// or wss:// URL"),
    (["--wamp", "ws://x/ws", "--realm", "r", "--listen", "127.0.0.1:0"], "the panel needs tokens"),
    (["--wamp", "ws://x/ws", "--realm", "r", "--authid", "fleet"], "--authid and --ticket-file go together"),
    (["--wamp", "ws://x/ws", "--realm", "r", "--config", str(DEMO.parent / "fleet.toml"), "--listen", "nowhere"],
     "--listen: expected HOST:PORT"),
])
def test_aggregate_usage_errors_exit_2(argv: list[str], phrase: str, capsys: pytest.CaptureFixture[str]) -> None:
    with logging_left_as_it_was():
        assert main(["aggregate", *argv]) == 2
    assert phrase in capsys.readouterr().err


def test_the_fleet_config_is_a_config_without_devices() -> None:
    cfg = configfile.load(str(DEMO.parent / "fleet.toml"), devices_required=False)
    assert cfg.devices == {} and {t.name for t in cfg.tokens} == {"demo-admin", "demo-panel"}
    with pytest.raises(ConfigError, match="no devices configured"):
        configfile.load(str(DEMO.parent / "fleet.toml"))


# -- error mappings ---------------------------------------------------------------------------------
def test_every_json_rpc_error_becomes_its_pictl_error_uri_and_back() -> None:
    from autobahn.wamp.exception import ApplicationError

    from controller.bridges.wamp.bridge import application_error
    from controller.fleet.aggregator import rpc_error
    from controller.wire import errors

    wire = errors.Busy("door is busy with earlier actions", device="door").to_wire()
    err = application_error(wire)
    assert (err.error, err.args, err.kwargs) == (
        "pictl.error.busy", ("door is busy with earlier actions",), {"code": -32003, "data": {"device": "door"}})
    back = rpc_error(err, "pi01", "door.open")
    assert isinstance(back, errors.Busy) and back.to_wire() == wire
    assert application_error({"code": -32099, "message": "?"}).error == "pictl.error.internal_error"
    # The router's own errors: a node gone mid-call is "not confirmed, outcome unknown", never
    # "unavailable" (which promises that nothing was done).
    canceled = rpc_error(ApplicationError("wamp.error.canceled", "callee disconnected from in-flight request"),
                         "pi01", "door.open")
    assert isinstance(canceled, errors.NotConfirmed)
    assert canceled.data is not None and canceled.data["observed"] == "unknown"
    gone = rpc_error(ApplicationError("wamp.error.no_such_procedure", "no callee"), "pi01", "door.open")
    assert isinstance(gone, errors.Unavailable)


# -- the fleet view's bookkeeping -------------------------------------------------------------------
def test_the_fleet_view_follows_events_and_asks_for_a_resync_on_a_gap() -> None:
    from controller.fleet.view import FleetView

    view = FleetView()
    seen: list[tuple[str, str]] = []
    view.on_change(lambda node, what, data: seen.append((node, what)))
    door = {"kind": "door", "online": True, "state": {"state": "closed"}, "last_update": None}
    view.joined("pi01", 7, {"devices": {"door": {"kind": "door", "actions": {}}}},
                {"devices": {"door": door}, "seq": 4, "epoch": "e1"})
    event = {"topic": "door.state", "seq": 5, "time": "2026-12-01T00:00:00.000Z",
             "data": {"state": "open", "actuator": True, "cause": "rpc"}}
    assert view.event("pi01", event) is True
    snapshot = view.snapshot()["nodes"]["pi01"]
    assert snapshot["online"] is True
    assert snapshot["devices"]["door"] == {"kind": "door", "online": True, "last_update": "2026-12-01T00:00:00.000Z",
                                           "state": {"state": "open", "actuator": True}}
    assert view.event("pi01", {**event, "seq": 5}) is True  # a duplicate is ignored
    assert view.event("pi01", {"topic": "system.status", "seq": 8, "time": "t",
                               "data": {"device": "door", "online": False, "reason": "unplugged"}}) is False  # gap
    assert view.nodes["pi01"].devices["door"]["online"] is False
    view.left("pi01", "left the router")
    assert view.snapshot()["nodes"]["pi01"]["online"] is False
    assert seen == [("pi01", "joined"), ("pi01", "event"), ("pi01", "event"), ("pi01", "left")]
    assert json.dumps(view.snapshot())  # plain JSON, as published


def test_a_change_made_while_the_fleet_reads_a_node_is_not_lost() -> None:
    """Events that arrive between the node's registration and the end of reading its status are
    held and applied after the picture when newer than it (the fleet once stayed stale)."""
    from controller.fleet.view import EARLY_NODES, FleetView

    view = FleetView()
    closed = {"kind": "door", "online": True, "state": {"state": "closed"}, "last_update": None}
    old = {"topic": "door.state", "seq": 3, "time": "t3", "data": {"state": "closed", "cause": "rpc"}}
    new = {"topic": "door.state", "seq": 5, "time": "t5", "data": {"state": "open", "cause": "rpc"}}
    assert view.event("pi01", old) is True and view.event("pi01", new) is True  # heard while reading it
    assert "pi01" not in view.snapshot()["nodes"]  # an event alone makes no node
    view.joined("pi01", 7, {"devices": {"door": {"kind": "door", "actions": {}}}},
                {"devices": {"door": closed}, "seq": 4, "epoch": "e1"})  # read before seq 5 happened
    assert view.nodes["pi01"].devices["door"]["state"] == {"state": "open"} and view.nodes["pi01"].seq == 5
    for i in range(EARLY_NODES + 10):  # names off the router: what is held stays bounded
        view.event(f"junk{i}", new)
    assert len(view._early) == EARLY_NODES


def test_a_changed_wamp_table_waits_for_a_restart() -> None:
    from controller.service.reload import plan_reload

    old = configfile.loads(DEMO_GPIO_TEXT + WAMP, str(DEMO))
    new = configfile.loads(DEMO_GPIO_TEXT + WAMP.replace('node = "pi01"', 'node = "pi02"'), str(DEMO))
    plan = plan_reload(old, new)
    assert plan.restart_needed == ("wamp changed",)
    assert plan.in_force.wamp == old.wamp  # the running node keeps its name until the restart
