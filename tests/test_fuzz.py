"""Hostile input (issue 5): hypothesis over the codec, and through a live socket to a daemon.

Invariants: decoding never raises; every text frame that is a request gets a
result or an error carrying its id; nothing actuates that the role and params
do not allow; no traceback, file path or secret reaches the wire or the log;
the daemon keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from controller.service import configfile as config
from controller.service.daemon import Daemon
from controller.wire import jsonrpc
from controller.wire.jsonrpc import Invalid, Request
from tests.conftest import TIME_SCALE
from tests.test_security import SECRETS, security_config

RUNS: Counter[str] = Counter()  # examples actually run, reported by the last test

json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=5), max_leaves=25)
METHODS = ["door.open", "door.close", "door.state", "light.on", "light.off", "light.toggle", "system.ping",
           "system.status", "system.describe", "events.subscribe", "events.unsubscribe", "session.auth",
           "sim.fault", "sim.clear", "nope", "door.", ".open", "", "door.open.now"]


@st.composite
def requests(draw: Any) -> Any:
    """Requests near the valid ones, with any member mutated, dropped or added."""
    req: dict[str, Any] = {"jsonrpc": "2.0", "method": draw(st.sampled_from(METHODS) | st.text(max_size=20))}
    if draw(st.booleans()):
        req["id"] = draw(st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8) | st.none() | st.floats(allow_nan=False,
                                                                                        allow_infinity=False))
    if draw(st.booleans()):
        req["params"] = draw(st.dictionaries(st.sampled_from(["timeout", "request_key", "device", "fault",
                                                             "topics", "since_seq", "token"])
                                             | st.text(max_size=8), json_values, max_size=4)
                             | json_values)
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from(["jsonrpc", "method", "id", "params", "extra"]))
        if draw(st.booleans()):
            req.pop(key, None)
        else:
            req[key] = draw(json_values)
    return req


frames = (requests().map(json.dumps)
          | st.lists(requests(), min_size=0, max_size=8).map(json.dumps)
          | json_values.map(json.dumps)
          | st.text(max_size=200)
          | st.integers(1, 3000).map(lambda n: "[" * n + "]" * n)
          | st.integers(4000, 6000).map(lambda n: '{"jsonrpc":"2.0","id":1,"method":"system.ping","params":{"x":'
                                         + "9" * n + "}}"))


# -- the codec -----------------------------------------------------------------------------------

@pytest.mark.long
@settings(max_examples=300, deadline=None)
@given(frames | st.binary(max_size=200))
def test_decode_never_raises_and_every_item_is_answerable(frame: str | bytes) -> None:
    RUNS["codec"] += 1
    message = jsonrpc.decode(frame)
    assert message.items
    replies = []
    for item in message.items:
        assert isinstance(item, (Request, Invalid))
        if isinstance(item, Invalid):
            replies.append(jsonrpc.error(item.id, item.error))
        elif not item.is_notification:
            replies.append(jsonrpc.result(item.id, {"echo": item.method, "params": item.params}))
    text = jsonrpc.encode(replies, message.batch)
    if text is not None:
        text.encode("utf-8")  # sendable as a text frame, whatever came in
        decoded = json.loads(text)
        assert isinstance(decoded, list) == message.batch


# -- a live daemon -------------------------------------------------------------------------------

class Served:
    def __init__(self, daemon: Daemon, loop: asyncio.AbstractEventLoop) -> None:
        self.daemon = daemon
        self.loop = loop

    def relay_changes(self) -> tuple[int, int]:
        assert self.daemon.plant is not None
        pins = self.daemon.plant.gpio_factory
        return len(pins.pin(17).states), len(pins.pin(22).states)


def serve_in_thread(cfg: config.Config) -> Iterator[Served]:
    """A daemon on its own loop in a thread, for synchronous (hypothesis) tests; stopped after."""
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def main() -> None:
        daemon = Daemon(cfg, simulate=True, time_scale=TIME_SCALE)
        await daemon.start()
        holder["served"] = Served(daemon, asyncio.get_running_loop())
        holder["stop"] = asyncio.Event()
        ready.set()
        await holder["stop"].wait()
        await daemon.stop()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(20)
    yield holder["served"]
    holder["served"].loop.call_soon_threadsafe(holder["stop"].set)
    thread.join(20)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    path: Path = tmp_path_factory.mktemp("fuzz") / "fuzz.toml"
    path.write_text(security_config())
    yield from serve_in_thread(config.load(str(path)))


def _notification(m: Any) -> bool:
    return (isinstance(m, dict) and m.get("jsonrpc") == "2.0" and isinstance(m.get("method"), str)
            and "id" not in m and set(m) <= {"jsonrpc", "method", "params"}
            and isinstance(m.get("params", {}), (dict, list)))


def _valid_id(value: Any) -> bool:
    # The link refuses float ids of 64-bit-integer magnitude or more: they could not be echoed exactly.
    if isinstance(value, float):
        return abs(value) < 2.0**63
    return isinstance(value, (str, int)) and not isinstance(value, bool)


def _within_limits(doc: Any, depth: int = 1) -> None:
    """The link's documented limits on top of JSON: nesting at most 1024 deep, numbers that fit a double."""
    if depth > 1024:
        raise ValueError("too deep")
    if isinstance(doc, int) and not isinstance(doc, bool) and abs(doc) >= 10**308:
        raise ValueError("number out of range")
    children = doc.values() if isinstance(doc, dict) else doc if isinstance(doc, list) else ()
    for child in children:
        _within_limits(child, depth + 1)


def owed_replies(frame: str) -> tuple[int, Any]:
    """How many response objects the frame is owed (0: none), and the id a single reply must carry.

    Written from the JSON-RPC 2.0 text, independently of the codec under test.
    """
    try:
        doc = json.loads(frame)
        _within_limits(doc)
    except (ValueError, RecursionError):
        return 1, None
    if isinstance(doc, list):
        if not doc or len(doc) > 50:
            return 1, None
        return sum(1 for m in doc if not _notification(m)), "batch"
    if _notification(doc):
        return 0, None
    single_id = doc.get("id") if isinstance(doc, dict) and _valid_id(doc.get("id")) else None
    return 1, single_id


def check_reply(text: str, count: int, expected_id: Any) -> None:
    assert "Traceback" not in text and 'File "' not in text and ".py" not in text
    assert not any(secret in text for secret in SECRETS.values())
    reply = json.loads(text)
    responses = reply if isinstance(reply, list) else [reply]
    assert isinstance(reply, list) == (expected_id == "batch" and count > 0)
    assert len(responses) == count
    for r in responses:
        assert r["jsonrpc"] == "2.0" and ("result" in r) != ("error" in r) and "id" in r
        if "error" in r:
            assert isinstance(r["error"]["code"], int) and isinstance(r["error"]["message"], str)
    if expected_id != "batch" and expected_id is not None:
        assert responses[0]["id"] == expected_id


def exchange(url: str, token: str, frame: str) -> None:
    count, expected_id = owed_replies(frame)
    with connect(url, additional_headers={"Authorization": f"Bearer {token}"}, compression=None,
                 open_timeout=10) as ws:
        ws.send(frame)
        # Frames are handled concurrently: the fence's answer may overtake the frame's.
        ws.send('{"jsonrpc":"2.0","id":"fence","method":"system.ping"}')
        fence = '{"jsonrpc":"2.0","id":"fence","result":{"pong":true}}'
        texts: list[str] = []
        fenced = False
        while not fenced or len(texts) < (1 if count else 0):
            text = ws.recv(timeout=10)
            if text == fence:
                fenced = True
            else:
                texts.append(text)
        assert len(texts) == (1 if count else 0), texts
        if count:
            check_reply(texts[0], count, expected_id)


@pytest.mark.long
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(frame=frames)
def test_a_viewer_cannot_actuate_anything_whatever_it_sends(served: Served, frame: str) -> None:
    RUNS["viewer"] += 1
    before = served.relay_changes()
    try:
        exchange(served.daemon.url, SECRETS["viewer"], frame)
    except ConnectionClosed as closed:
        assert closed.rcvd is not None and closed.rcvd.code in (1009,), closed  # only oversized frames
    assert served.relay_changes() == before


@st.composite
def invalid_action_params(draw: Any) -> dict[str, Any]:
    params = draw(st.dictionaries(st.text(min_size=1, max_size=8).filter(lambda k: k not in ("timeout",
                                                                                             "request_key")),
                                  json_values, min_size=1, max_size=3))
    if draw(st.booleans()):
        params["timeout"] = draw(st.sampled_from([0, -1, "1", True, None, 1e308, [], {}, 10**40]))
    return params


@pytest.mark.long
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["door.open", "door.close", "light.on", "light.off", "light.toggle"]),
       params=invalid_action_params())
def test_invalid_params_never_actuate_even_for_admin(served: Served, method: str, params: dict[str, Any]) -> None:
    RUNS["admin-invalid"] += 1
    before = served.relay_changes()
    frame = json.dumps({"jsonrpc": "2.0", "id": 7, "method": method, "params": params})
    with connect(served.daemon.url, additional_headers={"Authorization": f"Bearer {SECRETS['root']}"},
                 compression=None) as ws:
        ws.send(frame)
        reply = json.loads(ws.recv(timeout=10))
    assert reply["id"] == 7 and reply["error"]["code"] == -32602
    assert served.relay_changes() == before


@pytest.mark.long
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(min_size=1, max_size=300))
def test_binary_and_invalid_utf8_frames_do_not_hurt_the_daemon(served: Served, payload: bytes) -> None:
    RUNS["binary"] += 1
    headers = {"Authorization": f"Bearer {SECRETS['viewer']}"}
    with connect(served.daemon.url, additional_headers=headers, compression=None) as ws:
        ws.send(payload)  # a binary frame
        assert json.loads(ws.recv(timeout=10))["error"]["code"] == -32600
    try:
        payload.decode("utf-8")
        valid = True
    except UnicodeDecodeError:
        valid = False
    with connect(served.daemon.url, additional_headers=headers, compression=None) as ws:
        ws.send(payload, text=True)  # a text frame, possibly not UTF-8
        try:
            text = ws.recv(timeout=10)
            assert valid and json.loads(text)["jsonrpc"] == "2.0"
        except ConnectionClosed as closed:
            assert not valid and closed.rcvd is not None and closed.rcvd.code == 1007
    with connect(served.daemon.url, additional_headers=headers, compression=None) as ws:
        ws.send('{"jsonrpc":"2.0","id":1,"method":"system.ping"}')
        assert json.loads(ws.recv(timeout=10))["result"] == {"pong": True}


def test_no_secret_in_the_log_and_the_daemon_still_serves(served: Served, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="websockets")  # whatever an earlier test's `pictl` main() left it at
    for secret in SECRETS.values():
        with pytest.raises(InvalidStatus) as refused, \
                connect(served.daemon.url, additional_headers={"Authorization": f"Bearer {secret}x"},
                        source_address=("127.0.0.7", 0)):
            pass
        assert refused.value.response.status_code == 401  # 4 wrong secrets: not yet locked out (lockout_after 4)
    with connect(served.daemon.url, compression=None) as ws:
        ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "session.auth",
                            "params": {"token": SECRETS["panel"] + "?"}}))
        ws.recv(timeout=10)
        ws.send(json.dumps({"jsonrpc": "2.0", "id": 2, "method": "session.auth",
                            "params": {"token": SECRETS["panel"]}}))
        assert json.loads(ws.recv(timeout=10))["result"] == {"role": "panel"}
    # Everything the daemon logs (the test's own client library is not the daemon).
    text = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("websockets.client"))
    assert "[redacted]" in text  # the library's DEBUG header dump went through the filter
    assert caplog.records and not any(secret in text for secret in SECRETS.values())
    print(f"\nfuzz examples run: {dict(RUNS)}")
