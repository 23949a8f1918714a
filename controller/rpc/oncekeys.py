"""At-most-once actions: a ``request_key`` makes a retried call return the first outcome.

A wall panel that loses its connection mid-``door.open`` does not know whether
the door opened. Retrying with the same ``request_key`` (same token, within
the window) joins the first call — still running or finished — instead of
actuating again. Calls that failed before touching hardware (busy,
unavailable) are forgotten, so their retry runs.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from controller.wire.errors import Busy, InvalidParams, Unavailable

MAX_KEY_LENGTH = 128
MAX_ENTRIES = 10_000
NOT_ACTUATED = (Busy, Unavailable)  # outcomes that prove nothing was commanded


@dataclass
class _Entry:
    call: str  # canonical method + params, to catch a key reused for another call
    task: asyncio.Task[Any]
    expires: float  # monotonic


def check_key(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_KEY_LENGTH:
        raise InvalidParams(f"request_key must be a string of 1-{MAX_KEY_LENGTH} characters", param="request_key")
    return value


class OnceKeys:
    """Remembers keyed calls per token for *window* seconds."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()

    async def run(self, token: str, key: str, method: str, params: dict[str, Any],
                  start: Callable[[], Awaitable[dict[str, Any]]]) -> tuple[dict[str, Any], bool]:
        """The call's result and whether it was a replay; errors propagate as the first call's."""
        self._prune()
        call = json.dumps([method, params], sort_keys=True, default=str)
        entry = self._entries.get((token, key))
        if entry is not None:
            if entry.call != call:
                raise InvalidParams("request_key was already used for a different call", param="request_key")
            return await asyncio.shield(entry.task), True
        task: asyncio.Task[dict[str, Any]] = asyncio.ensure_future(start())
        entry = _Entry(call, task, time.monotonic() + self.window)
        self._entries[(token, key)] = entry
        task.add_done_callback(lambda t: self._settle((token, key), entry, t))
        return await asyncio.shield(task), False

    def _settle(self, slot: tuple[str, str], entry: _Entry, task: asyncio.Task[Any]) -> None:
        forget = task.cancelled() or isinstance(task.exception(), NOT_ACTUATED)
        if forget and self._entries.get(slot) is entry:
            del self._entries[slot]

    def _prune(self) -> None:
        now = time.monotonic()
        while self._entries:
            slot, entry = next(iter(self._entries.items()))
            if entry.task.done() and (entry.expires <= now or len(self._entries) > MAX_ENTRIES):
                del self._entries[slot]
            else:
                break
