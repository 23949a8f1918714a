"""A safe state that could not be written comes back (controller/devices/base.py): a Modbus unit that
stops answering during an action leaves its coil's safe write pending; the state says so, an event
and the metrics record it, and the write goes out first when the unit answers again, before the
next command."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from controller.service import configfile as config
from controller.wire.errors import NotConfirmed
from tests.conftest import sim_daemon, until, until_health
from tests.test_modbus_devices import CONFIG  # a fan on a coil of unit 1, 0.2 s timeouts


async def test_a_safe_write_the_silent_unit_missed_is_written_first_when_it_answers(
        caplog: pytest.LogCaptureFixture) -> None:
    daemon = sim_daemon(config.loads(CONFIG, "modbus.toml"))
    await daemon.start()
    try:
        assert daemon.plant is not None
        sim, fan = daemon.plant.modbus["plc"].devices, daemon.devices["fan"]
        events: list[tuple[str, dict[str, Any]]] = []
        daemon.ctx.events.tap(lambda e: events.append((e["topic"], e["data"])) if e["topic"].startswith("fan.")
                              else None)
        await fan.run("on", {}, 1.0)
        sim.silent.add(1)  # the unit stops answering: the command and the safe write both go unanswered
        with caplog.at_level(logging.INFO), pytest.raises(NotConfirmed) as failed:
            await fan.run("off", {}, 1.0)
        assert "FAILED (no reply within 0.2 s); kept pending" in failed.value.data["recovery"]
        assert fan.state()["safe_pending"] is True and sim.value(1, "coil", 0) == 1  # still on out there
        assert ("fan.safe", {"point": "fan.output", "outcome": "pending", "observed": "no reply within 0.2 s"}) \
            in events
        assert any(t == "fan.state" and d.get("safe_pending") for t, d in events)
        failures = [r for r in caplog.records if "safe value FAILED" in r.getMessage()]
        assert len(failures) == 1 and failures[0].exc_info is None  # one clear line, no traceback
        metrics = daemon.ctx.metrics.registry
        assert metrics.get_sample_value("pictl_safe_pending", {"device": "fan"}) == 1
        assert metrics.get_sample_value("pictl_safe_writes_total", {"device": "fan", "outcome": "pending"}) == 1

        since = time.monotonic()
        sim.silent.discard(1)
        await until_health(fan.output, online=True)
        # Nobody asks anything: the unit answering again is enough for the safe write to go out.
        await until(fan.listen, lambda: not fan.safe_pending)
        assert sim.value(1, "coil", 0) == 0 and "safe_pending" not in fan.state()
        result = await fan.run("on", {}, 1.0)
        assert result["state"] == "on"
        writes = [v for _, v in daemon.plant.history("fan", since)["outputs"]]
        assert writes == [False, True]  # off (the pending safe state), then on (the next command)
        assert ("fan.safe", {"point": "fan.output", "outcome": "written_late"}) in events
        assert metrics.get_sample_value("pictl_safe_pending", {"device": "fan"}) == 0
        assert metrics.get_sample_value("pictl_safe_writes_total",
                                        {"device": "fan", "outcome": "written_late"}) == 1
    finally:
        await daemon.stop()
