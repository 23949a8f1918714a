"""An asyncio client for scripts: calls with typed errors, live events, reconnects that resume.

::

    from controller.client import Client, NotConfirmed

    async with Client("ws://pi.lan:8765/ws", token="...") as pictl:
        try:
            result = await pictl.call("door.open", timeout=5)   # keyword params are the call's params
        except NotConfirmed as err:
            print("door did not open:", err.data["observed"], err.data["recovery"])
        async for event in pictl.events("door.*"):
            print(event.topic, event.data)

Behaviour worth knowing:

- **Reconnects.** When the link drops, the client reconnects by itself (backoff 0.2 s doubling to
  5 s, with jitter) and subscribes again with ``since_seq`` and ``epoch``: the daemon replays what
  was missed. When it cannot (the gap is too old, or the daemon restarted), every ``events()``
  stream yields one synthetic :class:`Event` with ``topic == "resync"`` whose ``data`` is a fresh
  ``system.status`` result, then carries on with live events. A token refused at a reconnect ends
  the client: waiting calls and streams raise :class:`Unauthorized`.
- **At most once.** Device actions (``<device>.<action>``, anything but ``.state`` and the
  ``system.``/``events.``/``session.``/``sim.`` methods) carry a ``request_key`` by default. If the
  link drops while one is in flight, the client sends it again with the same key once reconnected:
  the daemon answers with the first call's outcome (``"replayed": true``) and never actuates twice.
  Calls without a key (``at_most_once=False``, or non-actions) fail with :class:`ConnectionLost`
  instead, since their outcome is unknown.
- **Deadlines.** ``wait`` bounds the whole call, reconnects included (:class:`ReplyTimeout`). By
  default it is twice the action's ``timeout`` plus 5 s (queue wait plus confirmation), else 30 s.
- Rate limiting (``RateLimited``, with ``data["retry_after_s"]``) is reported, not retried.
"""

from controller.client.errors import (
    NOT_ACTIONS,
    Busy,
    ClientError,
    Closed,
    ConnectionLost,
    InternalError,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    NotConfirmed,
    ParseError,
    RateLimited,
    ReplyTimeout,
    RpcError,
    Unauthorized,
    Unavailable,
    Unreachable,
    error_from,
    is_action,
)
from controller.client.link import DEFAULT_URL, Client, Event, EventStream
from controller.client.sync import SyncClient

__all__ = [
    "DEFAULT_URL", "NOT_ACTIONS", "Busy", "Client", "ClientError", "Closed", "ConnectionLost", "Event",
    "EventStream", "InternalError", "InvalidParams", "InvalidRequest", "MethodNotFound", "NotConfirmed",
    "ParseError", "RateLimited", "ReplyTimeout", "RpcError", "SyncClient", "Unauthorized", "Unavailable",
    "Unreachable", "error_from", "is_action",
]
