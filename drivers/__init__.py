"""Drivers: turn a bus (GPIO lines, a serial port, a Modbus link) into points.

A driver knows buses, never doors. See :mod:`drivers.base` for the contract a
driver implements.
"""
