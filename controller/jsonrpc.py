"""JSON-RPC 2.0 codec: text in, requests out; results and errors in, text out.

Pure: no sockets, no clock, no device knowledge. The server feeds it each text
frame and sends back whatever :func:`encode` returns (``None`` means: send
nothing, as for notifications). Section numbers refer to the JSON-RPC 2.0
specification (https://www.jsonrpc.org/specification).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from controller.errors import InvalidRequest, ParseError, RpcError

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


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def _valid_id(value: Any) -> bool:
    # §4: String, Number, or Null. A boolean is not a number here.
    return value is None or isinstance(value, str) or (
        isinstance(value, (int, float)) and not isinstance(value, bool)
    )


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
    extra = set(obj) - {"jsonrpc", "method", "params", "id"}
    if extra:
        return Invalid(InvalidRequest(f"unexpected member(s): {', '.join(sorted(extra))}"), echo)
    return Request(method, params, raw_id)


def _parse_error(reason: str) -> Message:
    return Message((Invalid(ParseError(f"parse error: {reason}")),), batch=False)


def decode(text: str | bytes, max_batch: int = 50) -> Message:
    """Decode one frame. Never raises: malformed input becomes Invalid items."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")  # strict: json.loads would accept encoded surrogates
        doc = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except UnicodeDecodeError:
        return _parse_error("invalid UTF-8")
    except json.JSONDecodeError as exc:
        return _parse_error(f"{exc.msg} at line {exc.lineno} column {exc.colno}")
    except RecursionError:
        return _parse_error("document nested too deeply")
    except ValueError as exc:
        # Our hooks (NaN, Infinity, 1e999) or an integer past Python's digit limit.
        known = str(exc) if str(exc).endswith(("valid JSON", "out of range")) else "integer too large"
        return _parse_error(known)
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


def notification(method: str, params: dict[str, Any]) -> str:
    """A server-to-client notification as text."""
    return dumps({"jsonrpc": "2.0", "method": method, "params": params})


def dumps(obj: Any) -> str:
    # ensure_ascii: a lone surrogate that arrived as a \uD800 escape (legal JSON, not
    # legal UTF-8) is echoed as an escape again, so every reply can be sent.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def encode(responses: list[dict[str, Any]], batch: bool) -> str | None:
    """The reply frame: one object, an array for a batch, or None when nothing is owed (§6)."""
    if not responses:
        return None
    return dumps(responses if batch else responses[0])
