"""The protocol table: error codes and names, and the daemon's own method namespaces.

One table shared by the daemon (:mod:`controller.wire.errors`), the client
library (:mod:`controller.client`) and the bridges. Pure data: imports nothing.
"""

from __future__ import annotations

# JSON-RPC 2.0's own codes, and pictl's application codes (README "Errors").
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
UNAUTHORIZED = -32001
NOT_CONFIRMED = -32002
BUSY = -32003
UNAVAILABLE = -32004
RATE_LIMITED = -32005

# code -> the name used in metrics (outcome label), MQTT events and WAMP error URIs (pictl.error.<name>)
ERROR_NAMES: dict[int, str] = {
    PARSE_ERROR: "parse_error",
    INVALID_REQUEST: "invalid_request",
    METHOD_NOT_FOUND: "method_not_found",
    INVALID_PARAMS: "invalid_params",
    INTERNAL_ERROR: "internal_error",
    UNAUTHORIZED: "unauthorized",
    NOT_CONFIRMED: "not_confirmed",
    BUSY: "busy",
    UNAVAILABLE: "unavailable",
    RATE_LIMITED: "rate_limited",
}

# Method namespaces owned by the daemon: no device may be named after them, so
# "<namespace>.<anything>" is never a device action.
RESERVED_NAMES = frozenset({"system", "events", "session", "sim", "rpc"})
