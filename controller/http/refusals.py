"""Refused handshakes and requests: counted always, logged at most once per reason per window.

The throttling is :class:`controller.wire.throttle.ThrottledLog` (the daemon's one way of logging
what a peer can cause at will); a refusal is also counted in its Prometheus counter by reason.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter

from controller.wire.throttle import WINDOW_S, ThrottledLog

log = logging.getLogger(__name__)


class RefusalLog(ThrottledLog):
    """One per listener; *what* says what was refused ("handshake", "request") in the log."""

    def __init__(self, counter: Counter, what: str, window_s: float = WINDOW_S) -> None:
        super().__init__(log, f"refused {what} from {{peer}} ({{reason}}): {{detail}}",
                         f"refused {{count}} more {what}(s) ({{reason}}) in the last {{window:.0f}} s; "
                         "latest from {latest}", window_s=window_s)
        self.counter = counter
        self.what = what

    def refused(self, reason: str, peer: str, detail: str) -> None:
        self.counter.labels(reason).inc()
        self.note(reason, peer, detail)
