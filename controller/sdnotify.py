"""systemd's notification protocol, without a dependency: READY, WATCHDOG, STATUS, STOPPING, RELOADING.

The protocol is one datagram of ``KEY=VALUE`` lines to the AF_UNIX socket
named by ``$NOTIFY_SOCKET`` (a leading ``@`` names an abstract socket). When
the variable is unset (not started by systemd, or a test) every call is a
no-op, so the daemon never needs to know whether it is supervised.

The watchdog ping comes from :class:`Watchdog`, a task on the daemon's own
event loop: if the loop is wedged (a blocking call, a deadlock) the task cannot
run, no ping is sent, and systemd kills and restarts the service after
``WatchdogSec``. The task also withholds the ping while a health check reports
a problem (a bus thread that is stuck), so that too ends in a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from controller.daemon import Daemon

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


class Watchdog:
    """Pings every *interval* seconds from the event loop, only while *problem()* returns None.

    *problem* returns a one-line reason when the daemon is unhealthy, else None.
    """

    def __init__(self, notifier: Notifier, interval: float, problem: Callable[[], str | None]) -> None:
        self.notifier = notifier
        self.interval = interval  # seconds between pings
        self.problem = problem  # health check run before every ping
        self.withheld: str | None = None  # the reason pings are being withheld, if they are
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sd-watchdog")

    async def _run(self) -> None:
        while True:
            self.tick()
            await asyncio.sleep(self.interval)

    def tick(self) -> None:
        """One check: ping when healthy, else log (once per reason) and stay silent."""
        try:
            reason = self.problem()
        except Exception as exc:  # a broken health check is itself unhealthy
            reason = f"health check failed: {exc!r}"
        if reason is None:
            if self.withheld is not None:
                log.warning("healthy again (%s cleared): resuming watchdog pings", self.withheld)
                self.withheld = None
            self.notifier.watchdog()
            return
        if reason != self.withheld:
            log.error("unhealthy, withholding watchdog pings (systemd will restart pictl): %s", reason)
            self.withheld = reason

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class StatusLine:
    """Sends ``STATUS=`` whenever the composed line differs from the last one sent."""

    def __init__(self, notifier: Notifier, compose: Callable[[], str]) -> None:
        self.notifier = notifier
        self.compose = compose  # builds the current one-line summary
        self.last: str | None = None  # what the manager shows now

    def update(self, *_: object) -> None:
        """Recompute and send on change; accepts (and ignores) listener arguments."""
        line = self.compose()
        if line != self.last:
            self.last = line
            self.notifier.status(line)


STOP_MARGIN_S = 15.0  # beyond the drain deadline: closing buses, writing safe levels


class Supervision:
    """A daemon as systemd sees it: ready once serving, a one-line status, the watchdog,
    reloads, and stopping. Everything is a no-op without ``$NOTIFY_SOCKET``."""

    def __init__(self, daemon: Daemon, notifier: Notifier, watchdog_s: float | None) -> None:
        self.daemon = daemon
        self.notifier = notifier
        self.status = StatusLine(notifier, self._compose)
        self.watchdog = None if watchdog_s is None else Watchdog(notifier, watchdog_s, daemon.health_problem)
        self.last_reload: str | None = None  # the outcome of the last refused reload, shown in the status
        self._watched: weakref.WeakSet[object] = weakref.WeakSet()  # devices whose health we follow

    def _compose(self) -> str:
        line = self.daemon.status_line()
        return line if self.last_reload is None else f"{line}; {self.last_reload}"

    def _follow(self) -> None:
        """Recompute the status on every device health flip and connection change."""
        for device in self.daemon.devices.values():
            if device not in self._watched:
                self._watched.add(device)
                device.listen(self._on_device_event)
        server = self.daemon.server
        if server is not None and self.status.update not in server.connection_listeners:
            server.connection_listeners.append(self.status.update)

    def _on_device_event(self, device: object, what: str, data: object) -> None:
        if what == "status":  # online flipped
            self.status.update()

    def serving(self) -> None:
        """The daemon listens and its hardware is read: READY=1, then the watchdog."""
        self._follow()
        self.status.last = self._compose()
        self.notifier.ready(self.status.last)
        if self.watchdog is not None:
            self.watchdog.start()

    async def reload(self) -> None:
        """RELOADING=1, apply the config file, READY=1 whatever the outcome."""
        self.notifier.reloading()
        try:
            plan = await self.daemon.reload()
            self.last_reload = None if plan is not None else "last reload refused (see the log)"
        finally:
            self._follow()
            self.status.last = self._compose()
            self.notifier.ready(self.status.last)

    async def reload_on(self, wanted: asyncio.Event) -> None:
        """Reload each time *wanted* is set (SIGHUP), one reload at a time."""
        while True:
            await wanted.wait()
            wanted.clear()
            try:
                await self.reload()
            except Exception:
                log.exception("reload failed")

    def stopping(self) -> None:
        """STOPPING=1, asking for as long as draining and safe levels may take."""
        self.notifier.stopping(self.daemon.drain_deadline() + STOP_MARGIN_S)

    async def close(self) -> None:
        if self.watchdog is not None:
            await self.watchdog.stop()
        self.notifier.close()
