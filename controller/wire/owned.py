"""Tasks with an owner: started through it, waited for or cancelled by it, never lost.

A front door (the WebSocket listener, the MQTT bridge, the WAMP bridge) runs work that must outlive
the request that started it (an action whose caller went away finishes, and is audited); its owner
keeps those tasks here, waits for them at shutdown and cancels what is left. asyncio keeps only a
weak reference to a running task, so a task nobody holds can vanish mid-action: this holds them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
RECANCEL_EVERY = 0.1  # s between cancellations of a task that swallowed one (stop_task)


class OwnedTasks:
    """A set of running tasks that forgets each one as it ends."""

    def __init__(self, name: str) -> None:
        self.name = name  # whose tasks these are, for task names in a dump
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, work: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
        """Run *work* in a task held here until it ends."""
        task = asyncio.get_running_loop().create_task(work, name=name or self.name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(tuple(self._tasks))

    async def wait(self, timeout: float) -> bool:
        """Wait for the tasks running now (not those started meanwhile); False if some did not end in time."""
        pending = set(self._tasks)
        if not pending:
            return True
        _done, late = await asyncio.wait(pending, timeout=timeout)
        return not late

    def cancel(self) -> None:
        """Cancel every task still running (they end at their next await)."""
        for task in tuple(self._tasks):
            task.cancel()


async def stop_task(task: asyncio.Task[Any], timeout: float) -> bool:
    """Cancel *task* and wait up to *timeout* for it to end; False if it is still running then.

    One ``cancel()`` is not always enough: on Python 3.11, ``asyncio.wait_for`` (which aiomqtt and
    autobahn await inside) returns its result and drops a cancellation that arrives just as its
    future completes, and the task runs on as if never cancelled. So it is cancelled again until it
    ends. Its exception, if it ended with one, is taken here (its owner is stopping it anyway).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not task.done():
        left = deadline - loop.time()
        if left <= 0:
            return False
        task.cancel()
        await asyncio.wait({task}, timeout=min(RECANCEL_EVERY, left))
    if not task.cancelled():
        task.exception()  # retrieved: no "exception was never retrieved" at collection
    return True
