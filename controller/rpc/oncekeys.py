"""At-most-once actions: a ``request_key`` makes a retried call return the first outcome.

A wall panel that loses its connection mid-``door.open`` does not know whether
the door opened. Retrying with the same ``request_key`` (same token, within
the window) joins the first call — still running or finished — instead of
actuating again. Calls that failed before touching hardware (busy,
unavailable) are forgotten, so their retry runs.

A finished call is remembered by its outcome only (the result, or the error
without its traceback) and a digest of the call: not its task, whose
exception would keep every frame of the failed action alive for the whole
window. The chaos soak (bench/soak.py) measured the difference: about
1.2 KiB per remembered call before, a third of that after.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from controller.wire.errors import Busy, Dropped, InvalidParams, Unavailable

MAX_KEY_LENGTH = 128
MAX_ENTRIES = 10_000
NOT_ACTUATED = (Busy, Unavailable, Dropped)  # outcomes that prove nothing was commanded


@dataclass
class _Entry:
    call: bytes  # digest of the canonical method + params, to catch a key reused for another call
    task: asyncio.Task[Any] | None  # while the call runs; None once it has settled
    expires: float  # monotonic
    result: dict[str, Any] | None = None  # the outcome, once settled...
    error: BaseException | None = None  # ...or the error, its traceback dropped

    async def outcome(self) -> dict[str, Any]:
        if self.task is not None:
            return await asyncio.shield(self.task)
        if self.error is not None:
            raise _detached(self.error)  # a copy: the replay's traceback stays with the replay
        assert self.result is not None
        return self.result


def _detached(error: BaseException) -> BaseException:
    """The same error without a traceback (nor the frames it holds), when it can be copied."""
    try:
        return copy.copy(error)
    except Exception:  # an exception class whose constructor does not take its args back
        return error.with_traceback(None)


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
        call = hashlib.blake2b(json.dumps([method, params], sort_keys=True, default=str).encode(),
                               digest_size=16).digest()
        entry = self._entries.get((token, key))
        if entry is not None:
            if entry.call != call:
                raise InvalidParams("request_key was already used for a different call", param="request_key")
            return await entry.outcome(), True
        task: asyncio.Task[dict[str, Any]] = asyncio.ensure_future(start())
        entry = _Entry(call, task, time.monotonic() + self.window)
        self._entries[(token, key)] = entry
        task.add_done_callback(lambda t: self._settle((token, key), entry, t))
        return await asyncio.shield(task), False

    def _settle(self, slot: tuple[str, str], entry: _Entry, task: asyncio.Task[Any]) -> None:
        forget = task.cancelled() or isinstance(task.exception(), NOT_ACTUATED)
        if forget:
            if self._entries.get(slot) is entry:
                del self._entries[slot]
            return
        error = task.exception()
        if error is None:
            entry.result = task.result()
        else:
            entry.error = _detached(error)  # the task's own keeps its traceback for the first caller
        entry.task = None

    def _prune(self) -> None:
        now = time.monotonic()
        while self._entries:
            slot, entry = next(iter(self._entries.items()))
            settled = entry.task is None or entry.task.done()
            if settled and (entry.expires <= now or len(self._entries) > MAX_ENTRIES):
                del self._entries[slot]
            else:
                break
