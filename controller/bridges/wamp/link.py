"""A WAMP link kept up: an autobahn Component on the running loop that rejoins after any loss.

Shared by the node's bridge (:mod:`controller.bridges.wamp.bridge`) and the fleet aggregator
(:mod:`controller.fleet.aggregator`). Only imported when WAMP is used: autobahn is the optional
``pictl[wamp]`` extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import txaio

txaio.use_asyncio()  # before autobahn picks a framework

from autobahn.asyncio.component import Component  # noqa: E402
from autobahn.asyncio.wamp import ApplicationSession  # noqa: E402
from autobahn.asyncio.wamp import Session as WampSession  # noqa: E402
from autobahn.wamp.exception import ApplicationError  # noqa: E402

from controller.wire.owned import stop_task  # noqa: E402

log = logging.getLogger(__name__)
if logging.getLogger("autobahn").level == logging.NOTSET:
    # autobahn narrates every connection attempt at WARNING; the link's own lines say what matters.
    logging.getLogger("autobahn").setLevel(logging.ERROR)


class _RouterAwayIsNotAnError(logging.Filter):
    """autobahn logs a failed connection attempt ("Connection failed: TransportLost ...") at ERROR:
    a router restarting or out of reach is what the link rejoins from, and says so itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and record.getMessage().startswith("Connection failed"):
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


logging.getLogger("autobahn.asyncio.component.Component").addFilter(_RouterAwayIsNotAnError())

INITIAL_RETRY_DELAY = 0.5  # seconds before the first rejoin; grows x1.5 up to the configured cap
PING_INTERVAL, PING_TIMEOUT = 10.0, 5.0  # a router that stops answering pings is gone: rejoin


def wamp_transport(url: str, max_retry_delay: float) -> dict[str, Any]:
    """autobahn's transport settings: capped backoff, and pings that notice a dead link."""
    return {
        "type": "websocket", "url": url, "max_retries": -1,
        "initial_retry_delay": INITIAL_RETRY_DELAY, "max_retry_delay": max_retry_delay,
        "retry_delay_growth": 1.5, "retry_delay_jitter": 0.1,
        "options": {"auto_ping_interval": PING_INTERVAL, "auto_ping_timeout": PING_TIMEOUT},
    }


class QuietSession(WampSession):
    """An ApplicationError raised on purpose (a jammed door) is an answer, and a cancelled wait (the
    caller left; the action carries on) is expected: neither is a fault to log."""

    def onUserError(self, fail: Any, msg: str) -> None:
        if isinstance(getattr(fail, "value", None), (ApplicationError, asyncio.CancelledError)):
            return
        super().onUserError(fail, msg)


def component(url: str, realm: str, *, authid: str | None = None, ticket: str | None = None,
              max_retry_delay: float = 10.0) -> Component:
    """An autobahn Component for *realm* at *url* (WAMP-Ticket when *authid* is given), on the running loop."""
    # txaio keeps one global loop: point it at ours (tests and benchmarks run one loop after another).
    txaio.config.loop = asyncio.get_running_loop()  # type: ignore[attr-defined]
    authentication = {} if authid is None else {"ticket": {"authid": authid, "ticket": ticket}}
    return Component(transports=[wamp_transport(url, max_retry_delay)], realm=realm,
                     authentication=authentication, session_factory=QuietSession)


class Link:
    """A Component kept running: autobahn rejoins after a loss; should the component ever stop by
    itself (a router closing cleanly ends it), it is started again after a pause."""

    def __init__(self, name: str, make: Callable[[], Component], on_join: Callable[[ApplicationSession], Any],
                 on_leave: Callable[[], None], retry_delay: float) -> None:
        self.name = name
        self._make = make
        self._on_join = on_join
        self._on_leave = on_leave
        self._retry_delay = retry_delay
        self.session: ApplicationSession | None = None  # while joined
        self.component: Component | None = None
        self._runner: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._runner = asyncio.get_running_loop().create_task(self._run(), name=f"wamp link {self.name}")

    async def _run(self) -> None:
        while not self._stopping:
            self.component = comp = self._make()
            comp.on("join", self._joined)
            comp.on("leave", self._left)
            comp.on("disconnect", self._disconnected)
            try:
                await comp.start(asyncio.get_running_loop())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("%s: WAMP link ended: %s", self.name, exc)
            if not self._stopping:
                await asyncio.sleep(self._retry_delay)

    async def _joined(self, session: ApplicationSession, details: Any) -> None:
        self.session = session
        try:
            await self._on_join(session)
        except Exception as exc:
            # Registration refused (the node name is taken) or the link dropped while joining:
            # leave, so that autobahn's backoff tries again.
            log.error("%s: %s; leaving the router to try again", self.name, exc)
            if session.is_attached():
                session.leave("pictl.close.rejoin", str(exc))

    def _left(self, session: ApplicationSession, details: Any) -> None:
        if self.session is session:
            self.session = None
            self._on_leave()

    def _disconnected(self, session: ApplicationSession, was_clean: bool) -> None:
        self._left(session, None)

    @property
    def joined(self) -> bool:
        return self.session is not None and self.session.is_attached()

    async def stop(self, timeout: float = 3.0) -> None:
        """Leave the router (goodbye) and stop reconnecting."""
        self._stopping = True
        if self.component is not None:
            try:
                async with asyncio.timeout(timeout):
                    await self.component.stop()
            except Exception as exc:  # a link that is half dead: nothing more to say to it
                log.debug("%s: leaving the router: %s", self.name, exc)
        if self._runner is not None:
            # A stopped component ends by itself (its done future resolves, from a callback still to
            # come): let it, rather than cancel that future under it (autobahn would then resolve a
            # future it already dropped, and log the AttributeError).
            with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self._runner), timeout)
            if not await stop_task(self._runner, timeout):
                log.warning("%s: the link's task did not stop within %.1f s", self.name, timeout)
        transport = getattr(self.session, "_transport", None)
        if transport is not None:  # the goodbye went unanswered: drop the connection
            transport.close()
        self.session = None


