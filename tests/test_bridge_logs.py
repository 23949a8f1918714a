"""A broker going away is routine (controller/bridges/mqtt/quiet.py): what aiomqtt, paho and asyncio
log about it at ERROR comes out as a WARNING line, and only their lines about that."""

from __future__ import annotations

import errno
import logging

from controller.bridges.mqtt.bridge import CLIENT_LOG  # importing the bridge installs the filters


def record(name: str, msg: str, exc: BaseException | None = None) -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, None,
                             (type(exc), exc, None) if exc is not None else None)


def handled(logger: logging.Logger, rec: logging.LogRecord) -> logging.LogRecord:
    assert logger.filter(rec)
    return rec


def test_paho_s_lost_socket_is_a_warning() -> None:
    lost = "failed to receive on socket: [Errno 104] Connection reset by peer"
    rec = handled(CLIENT_LOG, record(CLIENT_LOG.name, lost))
    assert rec.levelno == logging.WARNING


def test_aiomqtt_s_late_socket_registration_is_one_warning_line_and_nothing_else_changes() -> None:
    asyncio_log = logging.getLogger("asyncio")
    late = handled(asyncio_log, record("asyncio", "Exception in callback BaseSelectorEventLoop.add_writer(35, <f>)",
                                       OSError(errno.EBADF, "Bad file descriptor")))
    assert late.levelno == logging.WARNING and late.exc_info is None and "EBADF" in late.getMessage()
    other = handled(asyncio_log, record("asyncio", "Exception in callback something_else()", ValueError("x")))
    assert other.levelno == logging.ERROR and other.exc_info is not None
