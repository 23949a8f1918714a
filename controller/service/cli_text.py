"""How ``pictl watch --pretty`` and ``pictl status`` show what the daemon said: lines for people."""

from __future__ import annotations

import json
from typing import Any


def pretty_event(event: Any) -> str:
    """One readable line: time, topic, seq, the data as key=value."""
    when = (event.time or "")[11:23] or "--:--:--.---"
    if event.is_resync:
        devices = event.data.get("devices", {})
        summary = ", ".join(f"{name}={state_text(d)}" for name, d in devices.items())
        return f"{when:12}  --- resync: events were missed; now {summary}"
    data = " ".join(f"{k}={short_value(v)}" for k, v in event.data.items())
    return f"{when:12}  {event.topic:<22} #{event.seq:<6} {data}"


def short_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def state_text(device: dict[str, Any]) -> str:
    """A device's state in a few words: the state name, a value with its unit, or compact JSON."""
    state = device.get("state")
    if isinstance(state, dict):
        if isinstance(state.get("state"), str):
            return state["state"]
        if "value" in state:
            return f"{short_value(state['value'])}{' ' + state['unit'] if state.get('unit') else ''}"
        if isinstance(state.get("values"), dict):  # several values (a meter): each with its unit
            units: dict[str, Any] = state["units"] if isinstance(state.get("units"), dict) else {}
            return ", ".join(f"{k} {short_value(round(v, 3) if isinstance(v, float) else v)}"
                             f"{' ' + units[k] if units.get(k) else ''}" for k, v in state["values"].items())
        shown = {k: v for k, v in state.items() if k not in ("since", "at")}
        return json.dumps(shown, separators=(",", ":"))
    return json.dumps(state)


def age(iso_time: str | None, now: float) -> str:
    from datetime import datetime

    if not iso_time:
        return "never"
    try:
        then = datetime.fromisoformat(iso_time.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return iso_time
    seconds = max(0.0, now - then)
    if seconds < 60:
        ago = f"{seconds:.1f} s ago"
    elif seconds < 3600:
        ago = f"{seconds / 60:.0f} min ago"
    else:
        ago = f"{seconds / 3600:.1f} h ago"
    return f"{iso_time[11:19]} ({ago})"


def status_table(status: dict[str, Any], now: float) -> str:
    rows = [("DEVICE", "KIND", "ONLINE", "STATE", "LAST UPDATE")]
    for name, device in status.get("devices", {}).items():
        if device.get("online"):
            online = "yes"
        else:
            since = device.get("since") or ""
            online = "no" + (f" since {since[11:19]}" if since else "") + (
                f" ({device['reason']})" if device.get("reason") else "")
        rows.append((name, str(device.get("kind", "?")), online, state_text(device),
                     age(device.get("last_update"), now)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1]
                     for row in rows)
