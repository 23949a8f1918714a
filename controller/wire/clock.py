"""Timestamps as they appear on the wire."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(at: float) -> str:
    """Wall-clock seconds as ISO 8601 UTC with milliseconds: 2026-11-26T07:12:03.114Z."""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
