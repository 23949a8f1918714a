"""Log lines a peer can cause as often as it likes: counted always, written at most once per reason
per window.

An attacker can make thousands of refusals, failed logins or malformed messages a second; one log
line each would fill the journal (and the SD card). The first line of a reason is written at once;
lines of that reason within the next window (10 s) are only counted, and one line at the end of
the window says how many there were and the latest. A quiet window ends the cycle.

Reasons are fixed words (a metric label, an error name), never a client's text: each holds one
small window for the life of the owner.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

WINDOW_S = 10.0


@dataclass
class _Window:
    timer: asyncio.TimerHandle | None = None  # set while a window is open
    count: int = 0  # lines held back since the last one written
    latest: str = ""  # the last of them: who, and what


class ThrottledLog:
    """One per kind of line. *first* and *more* are the two lines' templates: ``{peer}``, ``{reason}``,
    ``{detail}`` in the first; ``{count}``, ``{reason}``, ``{window}``, ``{latest}`` (peer: detail) in
    the summary."""

    def __init__(self, logger: logging.Logger, first: str, more: str, *, window_s: float = WINDOW_S,
                 level: int = logging.WARNING) -> None:
        self.logger = logger
        self.first = first
        self.more = more
        self.window_s = window_s
        self.level = level
        self._windows: dict[str, _Window] = {}

    def note(self, reason: str, peer: str, detail: str) -> None:
        """One more line of *reason*: written now if its window is closed, else counted."""
        window = self._windows.setdefault(reason, _Window())
        if window.timer is not None:
            window.count += 1
            window.latest = f"{peer}: {detail}"
            return
        self.logger.log(self.level, "%s", self.first.format(peer=peer, reason=reason, detail=detail))
        self._open(reason, window)

    def _open(self, reason: str, window: _Window) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a thread, a shutdown): every line is written
            return
        window.timer = loop.call_later(self.window_s, self._close, reason)

    def _summary(self, reason: str, window: _Window, window_s: float) -> None:
        self.logger.log(self.level, "%s", self.more.format(count=window.count, reason=reason, window=window_s,
                                                           latest=window.latest))
        window.count = 0

    def _close(self, reason: str) -> None:
        window = self._windows[reason]
        window.timer = None
        if window.count:
            self._summary(reason, window, self.window_s)
            self._open(reason, window)  # keep summarising while it goes on

    def close(self) -> None:
        """Stop the timers (the owner is closing); what is held back is written now."""
        for reason, window in self._windows.items():
            if window.timer is not None:
                window.timer.cancel()
                window.timer = None
                if window.count:
                    self._summary(reason, window, self.window_s)


class ThrottledFilter(logging.Filter):
    """A library's warnings (aiomqtt's "pending publish calls", "queue is full") through a
    :class:`ThrottledLog`: *reasons* maps each known message template to its reason word."""

    def __init__(self, throttled: ThrottledLog, reasons: dict[str, str], source: str) -> None:
        super().__init__()
        self.throttled = throttled
        self.reasons = reasons
        self.source = source

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        self.throttled.note(self.reasons.get(str(record.msg), "other"), self.source, record.getMessage())
        return False
