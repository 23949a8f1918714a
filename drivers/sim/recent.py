"""A list that keeps only its newest entries: the simulator's records of what happened.

gpiozero's mock pins record every state change and the simulated Modbus server every
request, for tests to count and compare; under ``pictl serve --simulate`` (the demo, the
soak) those lists grew for as long as the daemon ran. This one stays a list (tests index,
slice and count it) but drops its oldest tenth once it holds *limit* entries.
"""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")

# More than any test makes. Per list: the demo has one per pin and one per Modbus link, and at the
# soak's pace 10,000 took half an hour to fill (5 MB of RSS rising all that time); 1,000 fill in
# minutes and hold about 100 KB each.
LIMIT = 1_000


class Recent(list[T]):
    def __init__(self, items: list[T] | None = None, limit: int = LIMIT) -> None:
        super().__init__(items or [])
        self.limit = limit

    def append(self, item: T) -> None:
        if len(self) >= self.limit:
            del self[: max(1, self.limit // 10)]
        super().append(item)
