"""JSON-RPC errors: the standard ones and pictl's application codes (README, *Errors*)."""

from __future__ import annotations

from typing import Any


class RpcError(Exception):
    """An error that becomes a JSON-RPC error object on the wire.

    ``message`` and ``data`` are sent to the client as they are: never put a
    traceback, a file path or a secret in them.
    """

    code = -32603
    name = "internal_error"  # used as the metrics "outcome" label

    def __init__(self, message: str | None = None, **data: Any) -> None:
        super().__init__(message or self.name.replace("_", " "))
        self.message = message or self.name.replace("_", " ")  # one line for humans
        self.data = data or None  # machine-readable details

    def to_wire(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class ParseError(RpcError):
    code, name = -32700, "parse_error"


class InvalidRequest(RpcError):
    code, name = -32600, "invalid_request"


class MethodNotFound(RpcError):
    code, name = -32601, "method_not_found"


class InvalidParams(RpcError):
    code, name = -32602, "invalid_params"


class InternalError(RpcError):
    code, name = -32603, "internal_error"


class Unauthorized(RpcError):
    code, name = -32001, "unauthorized"


class NotConfirmed(RpcError):
    code, name = -32002, "not_confirmed"


class Busy(RpcError):
    code, name = -32003, "busy"


class Unavailable(RpcError):
    code, name = -32004, "unavailable"


class RateLimited(RpcError):
    code, name = -32005, "rate_limited"
