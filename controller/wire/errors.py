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
    name = p.ERROR_NAMES[code]  # used as the metrics "outcome" label; a subclass's follows from its code

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.name = p.ERROR_NAMES.get(cls.code, cls.name)

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


class InvalidRequest(RpcError):
    code = p.INVALID_REQUEST


class MethodNotFound(RpcError):
    code = p.METHOD_NOT_FOUND


class InvalidParams(RpcError):
    code = p.INVALID_PARAMS


class InternalError(RpcError):
    code = p.INTERNAL_ERROR


class Unauthorized(RpcError):
    code = p.UNAUTHORIZED


class NotConfirmed(RpcError):
    code = p.NOT_CONFIRMED


class Busy(RpcError):
    code = p.BUSY


class Unavailable(RpcError):
    code = p.UNAVAILABLE


class RateLimited(RpcError):
    code = p.RATE_LIMITED
