"""JSON-RPC 2.0 codec: text in, requests out; results and errors in, text out.

Pure: no sockets, no clock, no device knowledge. The server feeds it each text
frame and sends back whatever :func:`encode` returns (``None`` means: send
nothing, as for notifications). Section numbers refer to the JSON-RPC 2.0
specification (https://www.jsonrpc.org/specification).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson

from controller.wire.errors import InvalidRequest, ParseError, RpcError

Id = str | int | float | None
_NO_ID = object()  # marks a notification (§4.1: a request without "id")


@dataclass(frozen=True, slots=True)
class Request:
    """A well-formed request (§4)."""

    method: str  # the procedure name
    params: dict[str, Any] | list[Any] | None  # §4.2: by-name, by-position, or omitted
    id: Any  # the id as sent, or _NO_ID for a notification

    @property
    def is_notification(self) -> bool:
        return self.id is _NO_ID


@dataclass(frozen=True, slots=True)
class Invalid:
    """A batch member or message that is not a valid request; answered with an error."""

    error: RpcError
    id: Id = None  # echoed when the member carried a usable id


@dataclass(frozen=True, slots=True)
class Message:
    """One decoded text frame."""

    items: tuple[Request | Invalid, ...]  # in the order received
    batch: bool  # §6: the reply must be an array


def _valid_id(value: Any) -> bool:
    # §4: String, Number, or Null. A boolean is not a number here. A float of integer
    # magnitude beyond 64 bits is an integer orjson could not keep exact: it could not be
    # echoed back as sent (§5), so it is refused rather than altered.
    if isinstance(value, float):
        return abs(value) < 2.0**63
    return value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


_MEMBERS = frozenset({"jsonrpc", "method", "params", "id"})


def _item(obj: Any) -> Request | Invalid:
    if not isinstance(obj, dict):
        return Invalid(InvalidRequest("a request must be a JSON object"))
    raw_id = obj.get("id", _NO_ID)
    echo = raw_id if raw_id is not _NO_ID and _valid_id(raw_id) else None
    if obj.get("jsonrpc") != "2.0":
        return Invalid(InvalidRequest('"jsonrpc" must be exactly "2.0"'), echo)
    method = obj.get("method")
    if not isinstance(method, str):
        return Invalid(InvalidRequest('"method" must be a string'), echo)
    if raw_id is not _NO_ID and not _valid_id(raw_id):
        return Invalid(InvalidRequest('"id" must be a string, a number or null'))
    params = obj.get("params")
    if "params" in obj and not isinstance(params, (dict, list)):
        return Invalid(InvalidRequest('"params" must be an object or an array'), echo)
    if not obj.keys() <= _MEMBERS:
        extra = sorted(set(obj) - _MEMBERS)
        return Invalid(InvalidRequest(f"unexpected member(s): {', '.join(extra)}"), echo)
    return Request(method, params, raw_id)


def _parse_error(reason: str) -> Message:
    return Message((Invalid(ParseError(f"parse error: {reason}")),), batch=False)


_FALLBACK = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def decode(text: str | bytes, max_batch: int = 50) -> Message:
    """Decode one frame. Never raises: malformed input becomes Invalid items.

    orjson is strict where the JSON-RPC link must be: UTF-8 only, no lone
    surrogates, no NaN or Infinity, no number that overflows a double, nesting
    at most 1024 deep. Integers beyond 64 bits are read as floats.
    """
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return _parse_error(f"{exc.msg} at line {exc.lineno} column {exc.colno}")
    if isinstance(doc, list):
        if not doc:  # §6: an empty array is a single Invalid Request
            return Message((Invalid(InvalidRequest("empty batch")),), batch=False)
        if len(doc) > max_batch:
            return Message((Invalid(InvalidRequest(f"batch too large: {len(doc)} > {max_batch} members")),),
                           batch=False)
        return Message(tuple(_item(member) for member in doc), batch=True)
    return Message((_item(doc),), batch=False)


def result(request_id: Any, value: Any) -> dict[str, Any]:
    """A success response object (§5)."""
    return {"jsonrpc": "2.0", "id": request_id, "result": value}


def error(request_id: Any, err: RpcError) -> dict[str, Any]:
    """An error response object (§5.1)."""
    return {"jsonrpc": "2.0", "id": request_id, "error": err.to_wire()}


def notification(method: str, params: dict[str, Any]) -> bytes:
    """A server-to-client notification, UTF-8 encoded, ready for a text frame."""
    return dumps_bytes({"jsonrpc": "2.0", "method": method, "params": params})


def dumps_bytes(obj: Any) -> bytes:
    try:
        return orjson.dumps(obj)
    except (orjson.JSONEncodeError, TypeError):
        # A value orjson refuses (a lone surrogate from a sensor line, an integer past
        # 64 bits): the standard library escapes it, so every reply can still be sent.
        return _FALLBACK.encode(obj).encode()


def dumps(obj: Any) -> str:
    return dumps_bytes(obj).decode()


def encode(responses: list[dict[str, Any]], batch: bool) -> str | None:
    """The reply frame: one object, an array for a batch, or None when nothing is owed (§6)."""
    frame = encode_frame(responses, batch)
    return None if frame is None else frame.decode()


def encode_frame(responses: list[dict[str, Any]], batch: bool) -> bytes | None:
    """As :func:`encode`, UTF-8 encoded: what a text frame carries (no decode and re-encode)."""
    if not responses:
        return None
    return dumps_bytes(responses if batch else responses[0])
