"""The audit trail: one JSON line per action call — who, from where, what, outcome, how long.

Written with the standard library's RotatingFileHandler, in one worker thread
(entries keep their order; the write, the fsync and the rotation never stall
the event loop): each entry is flushed to the file as it is written, and an
action's reply waits until its entry is written (a crashing daemon loses no
answered action; ``fsync = true`` also survives a power cut, at the cost of a
write to the SD card per action), up to :data:`WRITE_DEADLINE_S`: a stuck disk
delays replies, it does not stop them. The file is rotated by size. Tokens are
recorded by name, never by secret.
"""

from __future__ import annotations

import asyncio
import json
import logging
import logging.handlers
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from controller.security.auth import Session
from controller.wire.clock import iso
from drivers.base import Listeners

log = logging.getLogger(__name__)
MAX_PARAMS_CHARS = 1024  # params are client input: keep what is logged bounded
WRITE_DEADLINE_S = 5.0  # longest an action's reply waits for its entry to reach the file


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
        self._writer: ThreadPoolExecutor | None = None  # one thread: entries stay in order
        # Told (session, method, result, error) of every call recorded, whichever front door it came
        # through: the MQTT bridge keeps each device's "last outcome" from it.
        self.recorded: Listeners[[Session, str, dict[str, Any] | None, dict[str, Any] | None]] = \
            Listeners("audit entries")
        if path:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="pictl-audit")
            cls = _FsyncRotatingHandler if fsync else logging.handlers.RotatingFileHandler
            self._handler = cls(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
            self._handler.setFormatter(logging.Formatter("%(message)s"))
            self._file_log.addHandler(self._handler)

    def record(self, session: Session, method: str, params: Any, outcome: str, started: float,
               result: dict[str, Any] | None = None, error: dict[str, Any] | None = None) -> dict[str, Any]:
        """Log an entry for a call that began at *started* (``time.monotonic()``) and queue it for the
        file (without waiting for the write)."""
        entry, _ = self._record(session, method, params, outcome, started, result, error)
        return entry

    async def write(self, session: Session, method: str, params: Any, outcome: str, started: float,
                    result: dict[str, Any] | None = None, error: dict[str, Any] | None = None) -> dict[str, Any]:
        """Log an entry for a call that began at *started* (``time.monotonic()``) and wait (off the
        loop, up to WRITE_DEADLINE_S) until the file has it."""
        entry, written = self._record(session, method, params, outcome, started, result, error)
        if written is not None:
            try:
                await asyncio.wait_for(asyncio.wrap_future(written), WRITE_DEADLINE_S)
            except TimeoutError:
                log.error("audit file %s: an entry took over %.0f s to write; answering anyway", self.path,
                          WRITE_DEADLINE_S)
            except OSError as exc:
                log.error("audit file %s: cannot write: %s", self.path, exc.strerror or exc)
        return entry

    def _record(self, session: Session, method: str, params: Any, outcome: str, started: float,
                result: dict[str, Any] | None,
                error: dict[str, Any] | None) -> tuple[dict[str, Any], Future[None] | None]:
        # The wall clock first, then the call's duration: "time" minus "elapsed_ms" is then never after
        # the call began, however long the daemon stalls on its way here (descheduled on a loaded
        # machine, a garbage collection). Measured by the caller, a stall between its clock and this
        # one would move the call's span later than the action it records.
        now = time.time()
        elapsed_ms = (time.monotonic() - started) * 1000
        entry: dict[str, Any] = {
            "time": iso(now),
            "token": session.token.name if session.token else None,
            "role": session.role.name if session.role else None,
            "peer": session.peer,
            **({"via": session.via} if session.via else {}),
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
        written = None
        if self._writer is not None:
            written = self._writer.submit(self._file_log.info, line)
        log.info("audit %s", line)
        self.recorded.emit(session, method, result, error)
        return entry, written

    def close(self) -> None:
        """Write what is queued, then close the file (blocking: call it off the loop, see aclose)."""
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None
        if self._handler is not None:
            self._file_log.removeHandler(self._handler)
            self._handler.close()
            self._handler = None

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)


def _bounded(params: Any) -> Any:
    try:
        text = json.dumps(params, ensure_ascii=True)
    except (TypeError, ValueError):
        return "<unserialisable>"
    return params if len(text) <= MAX_PARAMS_CHARS else text[:MAX_PARAMS_CHARS] + "..."
