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


class Dropped(Exception):
    """A request dropped before it started because its caller has gone (a closed connection, a
    broker link that dropped, a WAMP caller that left) or a newer command replaced it. Never an error
    on the wire: nobody is left to answer. The dispatcher counts it (``pictl_rpc_dropped_total``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # a fixed word (a metric label): "disconnected", "superseded"


DISCONNECTED = "disconnected"  # why a request is dropped: its caller has gone
SUPERSEDED = "superseded"  # a newer command for the same device replaced it while it waited
OVERFLOW = "overflow"  # a front door's backlog of received messages was full: the oldest went (MQTT)
DROP_REASONS = (DISCONNECTED, SUPERSEDED, OVERFLOW)


NAME_LIMIT = 128  # a client's method name echoed in an error: at most this many characters
PARAM_NAME_LIMIT = 40  # a client's parameter name likewise
NAMES_LISTED = 8  # unknown parameter names echoed at most


def short(text: str, limit: int = NAME_LIMIT) -> str:
    """Client-supplied text echoed in an error or a log line, bounded."""
    return text if len(text) <= limit else text[:limit] + "..."


def refuse_unknown_params(where: str, params: dict[str, Any], allowed: tuple[str, ...] | frozenset[str] = ()) -> None:
    """The one check for parameters nobody asked for (-32602), whatever the method.

    The unknown names are echoed bounded like method names: at most :data:`NAMES_LISTED` of them,
    each cut to :data:`PARAM_NAME_LIMIT` characters, so a reply never grows with what a client sent.
    """
    unknown = sorted(set(params) - set(allowed))
    if not unknown:
        return
    shown = [short(name, PARAM_NAME_LIMIT) for name in unknown[:NAMES_LISTED]]
    more = f" and {len(unknown) - NAMES_LISTED} more" if len(unknown) > NAMES_LISTED else ""
    raise InvalidParams(f"unknown parameter(s) for {short(where)}: {', '.join(shown)}{more}",
                        unknown=shown, allowed=sorted(allowed))
