"""pictl's controller: devices, confirmation, the JSON-RPC link and the daemon."""

__version__ = "0.1.0"
