"""One capped exponential backoff, for every reconnect loop in pictl.

Used by the Modbus link (reconnects while no unit answers), the serial
reader (reopening an unplugged port), the Python client (reconnecting to the
daemon) and the bridges. Pure standard library on purpose: the client
library imports it without pulling in any bus library.
"""

from __future__ import annotations

import random


class Backoff:
    """Delays that start at *start*, grow by *factor* per failure, and never exceed *cap*.

    ``jitter`` (0..1) spreads each delay over ``[d * (1 - jitter), d]`` so that
    many clients cut off by the same outage do not come back in lock-step.
    """

    def __init__(self, start: float, cap: float, *, factor: float = 2.0, jitter: float = 0.0) -> None:
        if not 0 < start <= cap or factor < 1 or not 0 <= jitter <= 1:
            raise ValueError("need 0 < start <= cap, factor >= 1 and 0 <= jitter <= 1")
        self.start = start  # first delay, seconds
        self.cap = cap  # longest delay, seconds
        self.factor = factor  # growth per failure
        self.jitter = jitter  # fraction of each delay that is randomised away
        self._next = start  # the undithered delay the next call returns

    def next(self) -> float:
        """The delay to wait now; the following one grows towards the cap."""
        delay = self._next
        self._next = min(self._next * self.factor, self.cap)
        if self.jitter:
            delay *= 1 - self.jitter * random.random()
        return delay

    def reset(self) -> None:
        """After a success: the next failure waits *start* again."""
        self._next = self.start

    @property
    def upcoming(self) -> float:
        """The undithered delay :meth:`next` will return (for logs and tests)."""
        return self._next
