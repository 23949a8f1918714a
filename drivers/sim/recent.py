"""A list that keeps only its newest entries: the simulator's records of what happened.

gpiozero's mock pins record every state change and the simulated Modbus server every
request, for tests to count and compare; under ``pictl serve --simulate`` (the demo, the
soak) those lists grew for as long as the daemon ran. This one stays a list (tests index,
slice and count it) but drops its oldest tenth once it holds *limit* entries.
"""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")

LIMIT = 10_000  # far more than any test makes; about a megabyte of records at most


class Recent(list[T]):
    def __init__(self, items: list[T] | None = None, limit: int = LIMIT) -> None:
        super().__init__(items or [])
        self.limit = limit

    def append(self, item: T) -> None:
        if len(self) >= self.limit:
            del self[: max(1, self.limit // 10)]
        super().append(item)
