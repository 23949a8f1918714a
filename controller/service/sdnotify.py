"""systemd's notification protocol, without a dependency: READY, WATCHDOG, STATUS, STOPPING, RELOADING.

The protocol is one datagram of ``KEY=VALUE`` lines to the AF_UNIX socket
named by ``$NOTIFY_SOCKET`` (a leading ``@`` names an abstract socket). When
the variable is unset (not started by systemd, or a test) every call is a
no-op, so the daemon never needs to know whether it is supervised.

What to send when (readiness, the watchdog policy, status lines) is decided
beside the daemon, in :mod:`controller.service.supervision`.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends notifications to the service manager; a no-op without ``$NOTIFY_SOCKET``."""

    def __init__(self, address: str | None) -> None:
        # The socket address: a path, or "\0name" for an abstract socket; None when unsupervised.
        self.address = None if not address else ("\0" + address[1:] if address.startswith("@") else address)
        self._sock: socket.socket | None = None  # opened on first use

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: object) -> bool:
        """Send ``KEY=value`` lines in one datagram; False when unsupervised or the send failed.

        Never raises: a service manager that went away must not take the daemon down.
        """
        if self.address is None:
            return False
        text = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(text.encode("utf-8", "replace"), self.address)
        except OSError as exc:
            log.warning("cannot notify the service manager at %s: %s", self.address.replace("\0", "@"), exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send(READY=1, STATUS=status)

    def status(self, status: str) -> bool:
        # One line: the manager shows it in `systemctl status`.
        return self.send(STATUS=" ".join(status.split()))

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets the manager tell this reload from an earlier one (Type=notify-reload).
        return self.send(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000,
                         STATUS="reloading the configuration")

    def stopping(self, needs_s: float) -> bool:
        """Say we are stopping and may need *needs_s* seconds to drain and write safe levels."""
        return self.send(STOPPING=1, EXTEND_TIMEOUT_USEC=int(needs_s * 1_000_000),
                         STATUS="stopping: finishing actions, outputs to safe")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between pings (half of ``WATCHDOG_USEC``), or None when no watchdog is asked for.

    ``WATCHDOG_PID``, when set, must be this process: the variables may have
    leaked to a child of the supervised process.
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 2_000_000
