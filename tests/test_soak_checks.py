"""bench/soak.py's invariant checks catch what they are there to catch (a soak reporting zero
broken invariants means something only if each check can fail)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from controller.wire.clock import iso
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import soak  # bench/ is scripts, not a package
from soak_base import MONO_TO_WALL, Call


@pytest.fixture
def checker(tmp_path: Path) -> soak.Soak:
    args = argparse.Namespace(duration=60.0, clients=1, max_rss_growth=1.0, warmup=None, bridge=[],
                              verbose=False, watch=None, malloc=None, trace_every=60.0,
                              trace_frames=0)
    s = soak.Soak(args, [], workdir=tmp_path)
    s.started = s.record.started = 100.0
    return s


def audited(s: soak.Soak, method: str, key: str, end_mono: float, elapsed_ms: float) -> None:
    entry: dict[str, Any] = {"time": iso(end_mono + MONO_TO_WALL), "token": "demo-admin", "role": "admin",
                             "peer": "127.0.0.1:1", "method": method, "params": {"request_key": key},
                             "outcome": "ok", "elapsed_ms": elapsed_ms}
    with s.audit.open("a") as f:
        f.write(json.dumps(entry) + "\n")


def call(method: str, key: str, sent: float, replied: float, result: dict[str, Any] | None = None,
         error: dict[str, Any] | None = None) -> Call:
    reply = {"jsonrpc": "2.0", "id": 1, **({"result": result} if result is not None else {"error": error})}
    return Call(method, {"request_key": key}, sent, "c1", replied=replied, reply=reply)


def test_an_output_move_inside_an_audited_call_passes_and_one_outside_is_flagged(checker: soak.Soak) -> None:
    now = time.monotonic()
    audited(checker, "light.on", "k1", end_mono=now + 0.1, elapsed_ms=100.0)
    checker.record.history["light"]["outputs"] = [(now + 0.05, True), (now + 5.0, False)]  # the second: nobody asked
    checker.record.started = now - 1
    checker.record.check_moves([json.loads(line) for line in checker.audit.read_text().splitlines()])
    assert checker.violations.counts == {"unauthorised move": 1}
    assert checker.violations.first["unauthorised move"]["value"] is False


def test_a_move_during_a_reload_is_the_reload_s_doing(checker: soak.Soak) -> None:
    now = time.monotonic()
    checker.record.started = now - 1
    checker.daemon.reloads.append((now + 1.0, now + 1.2))
    checker.record.history["light"]["outputs"] = [(now + 1.1, False)]
    checker.record.check_moves([])
    assert checker.violations.total() == 0


def test_a_confirmed_state_the_plant_never_had_is_inconsistent(checker: soak.Soak) -> None:
    checker.record.history["door"]["positions"] = [(99.0, False)]  # closed all along
    checker.record.history["door"]["outputs"] = [(100.1, True)]
    result = {"state": "open", "changed": True, "confirmed": True}
    checker.record.check_confirmed(call("door.open", "k", 100.0, 100.5, result), result)
    assert checker.violations.counts == {"inconsistent": 1}

    checker.record.history["door"]["positions"].append((100.4, True))  # the door did reach open in time
    checker.violations.counts.clear()
    checker.record.check_confirmed(call("door.open", "k", 100.0, 100.5, result), result)
    assert checker.violations.total() == 0 and len(checker.record.overheads) == 1


def test_changed_with_nothing_moving_is_inconsistent(checker: soak.Soak) -> None:
    checker.record.history["light"]["positions"] = [(99.0, True)]
    checker.record.history["light"]["outputs"] = [(98.9, True)]
    result = {"state": "on", "changed": True, "confirmed": True}
    checker.record.check_confirmed(call("light.on", "k", 100.0, 100.1, result), result)
    assert checker.violations.counts == {"inconsistent": 1}


def test_a_failure_that_leaves_the_output_energised_is_unsafe(checker: soak.Soak) -> None:
    error = {"code": -32002, "message": "x", "data": {"recovery": "output returned to off"}}
    checker.record.history["light"]["outputs"] = [(100.1, True)]  # on, and never back
    checker.record.check_safe(call("light.on", "k", 100.0, 101.0, error=error), checker.counts)
    assert checker.violations.counts == {"unsafe failure": 1}

    checker.record.history["light"]["outputs"].append((100.9, False))
    checker.violations.counts.clear()
    checker.record.check_safe(call("light.on", "k", 100.0, 101.0, error=error), checker.counts)
    assert checker.violations.total() == 0


def test_a_safe_write_kept_pending_must_come_back(checker: soak.Soak) -> None:
    error = {"code": -32002, "message": "x", "data": {"recovery": "returning the output to its safe state FAILED "
                                                                  "(no reply within 0.5 s); kept pending: ..."}}
    checker.record.history["fan"]["outputs"] = [(100.1, True)]  # the unit took the command, then fell silent
    checker.record.check_safe(call("fan.on", "k", 100.0, 101.0, error=error), checker.counts)
    assert checker.violations.counts == {"pending safe write never written": 1}

    checker.violations.counts.clear()
    checker.record.history["fan"]["outputs"].append((103.0, False))  # it answers again: the pending write
    checker.record.check_safe(call("fan.on", "k", 100.0, 101.0, error=error), checker.counts)
    assert checker.violations.total() == 0
    assert checker.counts["failures that said the output could not be made safe"] == 2


def test_the_next_queued_action_moving_the_output_as_a_failure_is_answered_is_not_that_failure_s(
        checker: soak.Soak) -> None:
    """The hour soak "trim": fan.on failed (the unit silent; its safe write of off found the coil off
    already, so the plant recorded nothing), and the fan.on queued behind it switched the coil on
    0.5 ms before the failure's audit stamp: the device's queue is released before the daemon stamps
    the entry. The output was safe as the failure ended; a failure that left it on is still flagged."""
    error = {"code": -32002, "message": "x", "data": {"recovery": "output returned to off (safe state)"}}
    checker.record.history["fan"]["outputs"] = [(99.0, False), (101.2835, True)]
    audited(checker, "fan.on", "k", end_mono=101.284, elapsed_ms=1283.7)
    entry = json.loads(checker.audit.read_text())
    checker.record.check_safe(call("fan.on", "k", 100.0, 101.2845, error=error), checker.counts, entry)
    assert checker.violations.total() == 0

    checker.record.history["fan"]["outputs"] = [(99.0, False), (100.004, True)]  # this call's own write
    checker.record.check_safe(call("fan.on", "k", 100.0, 101.2845, error=error), checker.counts, entry)
    assert checker.violations.counts == {"unsafe failure": 1}
