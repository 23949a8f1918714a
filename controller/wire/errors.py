"""JSON-RPC errors as exceptions: the standard ones and pictl's application codes.

Codes and names come from :mod:`controller.wire.protocol`, the table the client shares.
"""

from __future__ import annotations

from typing import Any

from controller.wire import protocol as p


class RpcError(Exception):
    """An error that becomes a JSON-RPC error object on the wire.

    ``message`` and ``data`` are sent to the client as they are: never put a
    traceback, a file path or a secret in them.
    """

    code = p.INTERNAL_ERROR
    name = p.ERROR_NAMES[code]  # used as the metrics "outcome" label

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
    code = p.PARSE_ERROR
    name = p.ERROR_NAMES[code]


class InvalidRequest(RpcError):
    code = p.INVALID_REQUEST
    name = p.ERROR_NAMES[code]


class MethodNotFound(RpcError):
    code = p.METHOD_NOT_FOUND
    name = p.ERROR_NAMES[code]


class InvalidParams(RpcError):
    code = p.INVALID_PARAMS
    name = p.ERROR_NAMES[code]


class InternalError(RpcError):
    code = p.INTERNAL_ERROR
    name = p.ERROR_NAMES[code]


class Unauthorized(RpcError):
    code = p.UNAUTHORIZED
    name = p.ERROR_NAMES[code]


class NotConfirmed(RpcError):
    code = p.NOT_CONFIRMED
    name = p.ERROR_NAMES[code]


class Busy(RpcError):
    code = p.BUSY
    name = p.ERROR_NAMES[code]


class Unavailable(RpcError):
    code = p.UNAVAILABLE
    name = p.ERROR_NAMES[code]


class RateLimited(RpcError):
    code = p.RATE_LIMITED
    name = p.ERROR_NAMES[code]
