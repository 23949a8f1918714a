"""Refused handshakes and requests: counted always, logged at most once per reason per window.

An attacker can make thousands of refusals a second; one log line each would
fill the journal (and the SD card). The first refusal of a reason is logged at
once; refusals of that reason within the next window (10 s) are only counted,
and one line at the end of the window says how many there were and the latest
client. A quiet window ends the cycle.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from prometheus_client import Counter

log = logging.getLogger(__name__)
WINDOW_S = 10.0


@dataclass
class _Window:
    timer: asyncio.TimerHandle | None = None  # set while a window is open
    count: int = 0  # refusals since the last line
    latest: str = ""  # the last client refused, and why


class RefusalLog:
    """One per listener; *what* says what was refused ("handshake", "request") in the log."""

    def __init__(self, counter: Counter, what: str, window_s: float = WINDOW_S) -> None:
        self.counter = counter
        self.what = what
        self.window_s = window_s
        self._windows: dict[str, _Window] = {}

    def refused(self, reason: str, peer: str, detail: str) -> None:
        self.counter.labels(reason).inc()
        window = self._windows.setdefault(reason, _Window())
        if window.timer is not None:
            window.count += 1
            window.latest = f"{peer}: {detail}"
            return
        log.warning("refused %s from %s (%s): %s", self.what, peer, reason, detail)
        self._open(reason, window)

    def _open(self, reason: str, window: _Window) -> None:
        window.timer = asyncio.get_running_loop().call_later(self.window_s, self._close, reason)

    def _close(self, reason: str) -> None:
        window = self._windows[reason]
        window.timer = None
        if window.count:
            log.warning("refused %d more %s(s) (%s) in the last %.0f s; latest from %s", window.count, self.what,
                        reason, self.window_s, window.latest)
            window.count = 0
            self._open(reason, window)  # keep summarising while it goes on

    def close(self) -> None:
        """Stop the timers (the listener is closing); what is pending is logged now."""
        for reason, window in self._windows.items():
            if window.timer is not None:
                window.timer.cancel()
                if window.count:
                    log.warning("refused %d more %s(s) (%s); latest from %s", window.count, self.what, reason,
                                window.latest)
                window.timer = None
                window.count = 0
