"""The audit trail: one JSON line per action call — who, from where, what, outcome, how long.

Written with the standard library's RotatingFileHandler: each entry is
flushed to the file as it is written (a crashing daemon loses no finished
entry; ``fsync = true`` also survives a power cut, at the cost of a write to
the SD card per action), and the file is rotated by size. Tokens are recorded
by name, never by secret.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import time
from typing import Any

from controller.security.auth import Session
from controller.wire.clock import iso

log = logging.getLogger(__name__)
MAX_PARAMS_CHARS = 1024  # params are client input: keep what is logged bounded


class _FsyncRotatingHandler(logging.handlers.RotatingFileHandler):
    def flush(self) -> None:
        super().flush()
        if self.stream is not None:
            os.fsync(self.stream.fileno())


class AuditTrail:
    """Appends entries to a JSON-lines file (if configured) and to the daemon log."""

    def __init__(self, path: str | None, *, max_bytes: int = 10 * 1024 * 1024, backups: int = 5,
                 fsync: bool = False) -> None:
        self.path = path
        self._file_log = logging.getLogger(f"pictl.audit.{id(self)}")  # one per instance (tests make many)
        self._file_log.propagate = False
        self._file_log.setLevel(logging.INFO)
        self._handler: logging.Handler | None = None
        if path:
            cls = _FsyncRotatingHandler if fsync else logging.handlers.RotatingFileHandler
            self._handler = cls(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
            self._handler.setFormatter(logging.Formatter("%(message)s"))
            self._file_log.addHandler(self._handler)

    def record(self, session: Session, method: str, params: Any, outcome: str, elapsed_ms: float,
               result: dict[str, Any] | None = None, error: dict[str, Any] | None = None) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "time": iso(time.time()),
            "token": session.token.name if session.token else None,
            "role": session.role.name if session.role else None,
            "peer": session.peer,
            "method": method,
            "params": _bounded(params),
            "outcome": outcome,
            "elapsed_ms": round(elapsed_ms, 1),
        }
        if result is not None:
            entry["state"] = result.get("state")
            entry["changed"] = result.get("changed")
        if error is not None:
            entry["error"] = error
        line = json.dumps(entry, ensure_ascii=True, separators=(",", ":"))
        if self._handler is not None:
            self._file_log.info(line)
        log.info("audit %s", line)
        return entry

    def close(self) -> None:
        if self._handler is not None:
            self._file_log.removeHandler(self._handler)
            self._handler.close()
            self._handler = None


def _bounded(params: Any) -> Any:
    try:
        text = json.dumps(params, ensure_ascii=True)
    except (TypeError, ValueError):
        return "<unserialisable>"
    return params if len(text) <= MAX_PARAMS_CHARS else text[:MAX_PARAMS_CHARS] + "..."
