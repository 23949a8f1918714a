"""The client's exceptions: its own, and one per JSON-RPC error code of the shared protocol table."""

from __future__ import annotations

from typing import Any

from controller.wire import protocol


class ClientError(Exception):
    """A problem on the client's side of the link (not an answer from the daemon)."""


class Unreachable(ClientError):
    """The daemon cannot be reached (refused, no route, TLS or handshake failure)."""


class ConnectionLost(ClientError):
    """The link dropped while a call without a request_key was in flight: its outcome is unknown."""


class ReplyTimeout(ClientError, TimeoutError):
    """No reply within the call's ``wait``."""


class Closed(ClientError):
    """The client was closed."""


class RpcError(Exception):
    """An error answer from the daemon: ``code``, ``message`` and ``data`` as sent."""

    code = 0

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message
        self.data = data if data is not None else {}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data:
            out["data"] = self.data
        return out


class ParseError(RpcError):
    code = protocol.PARSE_ERROR


class InvalidRequest(RpcError):
    code = protocol.INVALID_REQUEST


class MethodNotFound(RpcError):
    code = protocol.METHOD_NOT_FOUND


class InvalidParams(RpcError):
    code = protocol.INVALID_PARAMS


class InternalError(RpcError):
    code = protocol.INTERNAL_ERROR


class Unauthorized(RpcError):
    """-32001: no valid token, or the role may not call the method. A token refused at the
    handshake carries ``data["http_status"]`` (401, 403 or 429)."""

    code = protocol.UNAUTHORIZED


class NotConfirmed(RpcError):
    """-32002: commanded but not observed in time; ``data``: expected, observed, elapsed_ms, recovery."""

    code = protocol.NOT_CONFIRMED


class Busy(RpcError):
    code = protocol.BUSY


class Unavailable(RpcError):
    """-32004: the device is offline; ``data``: device, since."""

    code = protocol.UNAVAILABLE


class RateLimited(RpcError):
    code = protocol.RATE_LIMITED


ERRORS: dict[int, type[RpcError]] = {cls.code: cls for cls in (
    ParseError, InvalidRequest, MethodNotFound, InvalidParams, InternalError,
    Unauthorized, NotConfirmed, Busy, Unavailable, RateLimited)}


def error_from(obj: Any) -> RpcError:
    """The typed exception for a JSON-RPC error object."""
    if not isinstance(obj, dict):
        return RpcError(protocol.INTERNAL_ERROR, f"malformed error: {obj!r}")
    code = obj.get("code")
    cls = ERRORS.get(code, RpcError) if isinstance(code, int) else RpcError
    return cls(code if isinstance(code, int) else protocol.INTERNAL_ERROR, str(obj.get("message", "")), obj.get("data"))


NOT_ACTIONS = tuple(sorted(f"{name}." for name in protocol.RESERVED_NAMES))  # never a device's method


def is_action(method: str) -> bool:
    """Does *method* name a device action (as opposed to state, system, events, session, sim)?
    Through the fleet a node's names come after the node's: ``pi02.door.open`` is an action,
    ``pi03.sim.fault`` is not."""
    *path, last = method.split(".")
    return bool(path) and last != "state" and not any(f"{part}." in NOT_ACTIONS for part in path)
