"""sd_notify in process: the datagrams, the watchdog's health rule, a wedged loop."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from controller.service.daemon import Daemon
from controller.service.sdnotify import Notifier, watchdog_interval
from controller.service.supervision import Supervision, Watchdog
from tests.conftest import ADMIN, NotifySocket, notify_address, on_gpio_demo, open_client


def test_notifier_without_notify_socket_is_a_silent_no_op() -> None:
    notifier = Notifier.from_environment({})
    assert not notifier.enabled
    assert notifier.ready("x") is False and notifier.watchdog() is False


@pytest.fixture(params=["path", "abstract"])
def either_form(request: pytest.FixtureRequest) -> Iterator[NotifySocket]:
    """Both address forms systemd uses: only here, the one place where the form makes a difference."""
    with tempfile.TemporaryDirectory(prefix="pictl-") as short:  # socket paths are limited to 107 bytes
        ns = NotifySocket(notify_address(request.param, short))
        yield ns
        ns.close()


async def test_messages_reach_the_socket_in_both_address_forms(either_form: NotifySocket) -> None:
    notify_socket = either_form
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": notify_socket.address})
    assert notifier.ready("2/2 devices online")
    assert await notify_socket.next("READY") == {"READY": "1", "STATUS": "2/2 devices online"}
    notifier.status("multi\nline   status")
    assert (await notify_socket.next("STATUS"))["STATUS"] == "multi line status"
    notifier.reloading()
    reloading = await notify_socket.next("RELOADING")
    assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
    notifier.stopping(61.5)
    stopping = await notify_socket.next("STOPPING")
    assert stopping["STOPPING"] == "1" and stopping["EXTEND_TIMEOUT_USEC"] == "61500000"
    notifier.close()


def test_a_vanished_manager_is_logged_not_raised(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier(str(tmp_path / "gone"))
    assert notifier.watchdog() is False
    assert "cannot notify the service manager" in caplog.text
    notifier.close()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "10000000"}, 5.0),
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}, 5.0),
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env) == expected


async def test_watchdog_withholds_pings_while_unhealthy(notify_socket: NotifySocket,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    reason: list[str | None] = ["bus rs485: reader thread stuck for 12 s"]
    dog = Watchdog(Notifier(notify_socket.address), 1.0, lambda: reason[0])
    dog.tick()
    dog.tick()
    assert notify_socket.drain() == []
    assert caplog.text.count("withholding watchdog pings") == 1  # once per reason, not per tick
    reason[0] = None
    dog.tick()
    assert await notify_socket.next("WATCHDOG") == {"WATCHDOG": "1"}
    assert "resuming watchdog pings" in caplog.text


async def test_a_broken_health_check_counts_as_unhealthy(notify_socket: NotifySocket) -> None:
    def broken() -> str | None:
        raise RuntimeError("boom")

    dog = Watchdog(Notifier(notify_socket.address), 1.0, broken)
    dog.tick()
    assert notify_socket.drain() == [] and dog.withheld and "boom" in dog.withheld


class WedgedBus:
    """A bus whose own thread is stuck: what a serial reader or Modbus link would report."""

    name = "rs485"
    kind = "modbus"

    def __init__(self) -> None:
        self.reason: str | None = "no poll completed for 30 s"

    def wedged(self) -> str | None:
        return self.reason

    def counters(self) -> dict[str, int]:
        return {}

    async def aclose(self) -> None:
        pass


demo_config = on_gpio_demo()


@pytest.fixture
async def supervised(daemon: Daemon, notify_socket: NotifySocket) -> AsyncIterator[Supervision]:
    sup = Supervision(daemon, Notifier(notify_socket.address), watchdog_s=0.05)
    sup.serving()
    yield sup
    await sup.close()


async def test_ready_carries_the_status_and_pings_follow(supervised: Supervision,
                                                         notify_socket: NotifySocket) -> None:
    ready = await notify_socket.next("READY")
    assert ready["STATUS"] == "2/2 devices online, 0 connections"
    assert await notify_socket.next("WATCHDOG") == {"WATCHDOG": "1"}


async def test_a_wedged_event_loop_sends_no_ping(supervised: Supervision, notify_socket: NotifySocket) -> None:
    await notify_socket.next("WATCHDOG")
    notify_socket.drain()
    # Block the event loop itself, as a stuck call would, for five watchdog periods
    # (pings every 0.05 s: WatchdogSec would be 0.1 s). Nothing may be sent meanwhile.
    time.sleep(5 * 0.05)
    assert [m for m in notify_socket.drain() if "WATCHDOG" in m] == []
    # Once the loop runs again, so do the pings.
    assert await notify_socket.next("WATCHDOG", timeout=2.0) == {"WATCHDOG": "1"}


async def test_a_wedged_bus_stops_the_pings(daemon: Daemon, supervised: Supervision,
                                            notify_socket: NotifySocket) -> None:
    await notify_socket.next("WATCHDOG")
    bus = WedgedBus()
    daemon.buses.append(bus)
    assert daemon.health_problem() == "bus rs485: no poll completed for 30 s"
    assert supervised.watchdog is not None
    supervised.watchdog.tick()  # the next tick after the bus says it is stuck
    notify_socket.drain()
    supervised.watchdog.tick()
    assert notify_socket.drain() == []
    bus.reason = None
    assert await notify_socket.next("WATCHDOG", timeout=2.0) == {"WATCHDOG": "1"}


async def test_offline_devices_do_not_stop_the_pings(daemon: Daemon, supervised: Supervision,
                                                     notify_socket: NotifySocket) -> None:
    # A device that is offline (unplugged, not answering) is not fixed by a restart.
    await notify_socket.next("READY")
    daemon.devices["light"].points[1].set_online(False, "feedback cable cut")
    status = await notify_socket.next("STATUS")
    assert status["STATUS"] == "1/2 devices online, 0 connections; offline: light"
    assert daemon.health_problem() is None
    assert await notify_socket.next("WATCHDOG") == {"WATCHDOG": "1"}


async def test_status_follows_connections(daemon: Daemon, supervised: Supervision,
                                          notify_socket: NotifySocket) -> None:
    await notify_socket.next("READY")
    async with open_client(daemon.url, ADMIN):
        assert (await notify_socket.next("STATUS"))["STATUS"] == "2/2 devices online, 1 connection"
    assert (await notify_socket.next("STATUS"))["STATUS"] == "2/2 devices online, 0 connections"
