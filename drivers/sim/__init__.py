"""The simulated plant: the far side of the real buses.

Nothing here is imported by a driver. The daemon, under ``--simulate``, builds
a :class:`drivers.sim.plant.Plant` and hands the drivers the plant's end of
each bus (a gpiozero mock pin factory), so the real drivers run unchanged.
"""
