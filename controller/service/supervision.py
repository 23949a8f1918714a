"""The daemon as the service manager sees it: ready, watchdog, status, reload, stop.

The watchdog ping comes from :class:`Watchdog`, a task on the daemon's own
event loop: if the loop is wedged (a blocking call, a deadlock) the task cannot
run, no ping is sent, and systemd kills and restarts the service after
``WatchdogSec``. The task also withholds the ping while a health check reports
a problem (a bus whose thread or poll loop is stuck, :meth:`drivers.base.Bus.wedged`),
so that too ends in a restart. The protocol itself is :mod:`controller.service.sdnotify`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from typing import Any

from controller.service.daemon import Daemon
from controller.service.memory import Trimmer
from controller.service.sdnotify import Notifier, watchdog_interval
from controller.wire.owned import stop_task

log = logging.getLogger(__name__)


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


RELOAD_STOP_S = 5.0  # at shutdown: how long a reload under way may take to stop (it is cancelled)
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
        self._unfollow: list[Callable[[], None]] = []  # what _follow subscribed to

    def _compose(self) -> str:
        line = self.daemon.status_line()
        return line if self.last_reload is None else f"{line}; {self.last_reload}"

    def _follow(self) -> None:
        """Recompute the status on every device health flip (a ``system.status`` event, whichever
        device, reloaded ones too) and every connection change."""
        if self._unfollow or self.daemon.ctx is None:
            return
        self._unfollow.append(self.daemon.ctx.events.tap(self._on_event))
        if self.daemon.server is not None:
            self._unfollow.append(self.daemon.server.on_connections(self.status.update))

    def _on_event(self, event: dict[str, Any]) -> None:
        if event["topic"] == "system.status":  # a device's online flag flipped
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
        for undo in self._unfollow:
            undo()
        self._unfollow.clear()
        if self.watchdog is not None:
            await self.watchdog.stop()
        self.notifier.close()


async def serve_until_signalled(daemon: Daemon, notifier: Notifier | None = None, *,
                                trimmer: Trimmer | None = None) -> None:
    """Run *daemon* until SIGTERM or SIGINT, then stop it cleanly; SIGHUP reloads the config.

    Under systemd (``$NOTIFY_SOCKET``) it reports READY once serving, pings the
    watchdog while healthy, keeps ``STATUS=`` current, and says RELOADING and STOPPING.
    *trimmer* gives freed memory back while serving (:mod:`controller.service.memory`).
    """
    notifier = Notifier.from_environment() if notifier is None else notifier
    trimmer = Trimmer(None) if trimmer is None else trimmer
    supervision = Supervision(daemon, notifier, watchdog_interval())
    stop = asyncio.Event()
    reload_wanted = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_wanted.set)  # before start: HUP's default kills
    signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    try:
        await daemon.start()  # a failed start has stopped the daemon itself
    except BaseException:
        for sig in signals:
            loop.remove_signal_handler(sig)
        await supervision.close()
        raise
    supervision.serving()
    trimmer.start()
    reloader = loop.create_task(supervision.reload_on(reload_wanted), name="reloader")
    try:
        await stop.wait()
        log.info("signal received: shutting down")
    finally:
        supervision.stopping()
        for sig in signals:  # a second signal must not kill us half-way to safe outputs
            loop.add_signal_handler(sig, log.info, "already shutting down; signal %s ignored", sig.name)
        # Outputs go safe in daemon.stop(): it runs even when a reload under way will not end in time.
        if not await stop_task(reloader, RELOAD_STOP_S):
            log.warning("a reload under way did not stop within %.0f s; stopping anyway", RELOAD_STOP_S)
        try:
            await daemon.stop()
        finally:
            await trimmer.stop()
            for sig in signals:
                loop.remove_signal_handler(sig)
            await supervision.close()
