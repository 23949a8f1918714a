"""Requests per poll for a meter's registers: one request per value, contiguous ranges merged, and
reads across the meter's reserved registers (``max_gap``), against the simulated Modbus server.

Each layout is polled by the real Modbus link (``drivers/modbus.py``) for ``--polls`` rounds; the
simulated server counts the read requests it answered. Every value is checked to decode to the
number the simulated meter wrote, so a plan that read the wrong registers would fail loudly.

    .venv/bin/python bench/poll_plan.py            # 50 polls per layout
    .venv/bin/python bench/poll_plan.py --polls 5  # CI: seconds
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drivers.base import Quantity
from drivers.modbus import ModbusLink
from drivers.modbus_spec import ModbusAddress, ModbusLinkConfig, ModbusSensorSpec, ModbusValue, decode
from drivers.sim.meter_world import attach_meter
from drivers.sim.modbus_world import SimModbusServer

# Eastron SDM120 input registers (float32, high word first): the four a house needs, and eleven.
SDM120_4 = {"voltage": 0, "current": 6, "power": 12, "energy": 342}
SDM120_11 = {"voltage": 0, "current": 6, "power": 12, "apparent_power": 18, "reactive_power": 24, "power_factor": 30,
             "phase_angle": 36, "frequency": 70, "import_energy": 72, "export_energy": 74, "energy": 342}
PACKED = {"voltage": 0, "current": 2, "power": 4, "energy": 6}  # a meter whose values sit side by side
LAYOUTS = {"SDM120, 4 values": SDM120_4, "SDM120, 11 values": SDM120_11, "contiguous, 4 values": PACKED}
CLASSES = {"voltage": "voltage", "current": "current", "power": "power", "energy": "energy",
           "import_energy": "energy", "export_energy": "energy", "frequency": "frequency"}


def spec(layout: dict[str, int], max_gap: int) -> ModbusSensorSpec:
    values = {name: ModbusValue(ModbusAddress("input", address, 1, "float32", "big", 1.0, 0.0),
                                Quantity("kWh" if "energy" in name else "", CLASSES.get(name)))
              for name, address in layout.items()}
    return ModbusSensorSpec(link="bench", device_id=1, values=values, max_gap=max_gap)


async def requests_per_poll(layout: dict[str, int], max_gap: int | None, polls: int) -> float:
    """*max_gap* None: one request per value (each value on a link of its own, as a poller that
    reads every value by itself would)."""
    server = SimModbusServer("bench")
    await server.start()
    # The meter answers across its gaps; its clock stands still, so every value can be checked exactly.
    attach_meter(server.devices, spec(layout, 4), time_scale=1e12)
    config = ModbusLinkConfig(name="bench", transport="tcp", host="127.0.0.1", port=server.port, baudrate=9600,
                              bytesize=8, parity="N", stopbits=1, timeout=1.0, poll_interval=3600.0,
                              offline_after=3, backoff_max=1.0)
    parts = [{name: address} for name, address in layout.items()] if max_gap is None else [layout]
    links = [ModbusLink(config) for _ in parts]
    meters = [link.source("m", spec(part, max_gap or 0)) for link, part in zip(links, parts, strict=True)]
    try:
        for link in links:
            await link.start()  # connects and polls once (and its poll loop once more, an hour apart)
        before = len(server.devices.reads())
        rounds = sum(link.counters()["polls"] for link in links)
        for _ in range(polls):
            for link in links:
                await link.poll()
        rounds = (sum(link.counters()["polls"] for link in links) - rounds) / len(links)
        count = (len(server.devices.reads()) - before) / rounds
        for meter in meters:  # each value decodes to what the meter holds
            for point in meter.points:
                words = [server.devices.value(1, "input", point.at.address + i) for i in range(2)]
                assert point.value == decode(point.at, words), point.name
        return count
    finally:
        for link in links:
            await link.stop()
        await server.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--polls", type=int, default=50)
    args = parser.parse_args()
    print(f"{'layout':<22} {'one per value':>14} {'contiguous':>11} {'max_gap = 4':>12}")
    for label, layout in LAYOUTS.items():
        naive = await requests_per_poll(layout, None, args.polls)
        merged = await requests_per_poll(layout, 0, args.polls)
        gaps = await requests_per_poll(layout, 4, args.polls)
        print(f"{label:<22} {naive:>14.1f} {merged:>11.1f} {gaps:>12.1f}")


if __name__ == "__main__":
    asyncio.run(main())
