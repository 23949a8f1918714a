"""A broker going away is routine: what MQTT's libraries log about it at ERROR, said as it is.

The bridge reconnects from a broker restart or a lost link and says so itself (WARNING: "lost the
broker; reconnecting"). Two libraries also log that moment at ERROR, one with a traceback:

- paho: ``failed to receive on socket: [Errno 104] Connection reset by peer`` (through the logger
  the bridge hands aiomqtt): a WARNING here;
- asyncio, for aiomqtt 2.5: it registers the socket for writing from paho's side with
  ``call_soon_threadsafe``, and when the broker drops the socket before that callback runs, the
  loop's ``add_writer`` fails with ``EBADF`` and asyncio logs ``Exception in callback
  BaseSelectorEventLoop.add_writer(...)`` with its traceback. One WARNING line here, without it.
"""

from __future__ import annotations

import errno
import logging


class _BrokerAwayIsNotAnError(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class _SocketGoneBeforeRegistered(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if (isinstance(error, OSError) and error.errno == errno.EBADF
                and str(record.msg).startswith("Exception in callback BaseSelectorEventLoop.add_")):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args, record.exc_info, record.exc_text = (
                "MQTT: the broker closed a socket before aiomqtt registered it with the loop (EBADF): "
                "the bridge reconnects", None, None, None)
        return True


def quiet(client_log: logging.Logger) -> None:
    """Install both on *client_log* (the one the bridge hands aiomqtt) and on asyncio's logger."""
    client_log.addFilter(_BrokerAwayIsNotAnError())
    logging.getLogger("asyncio").addFilter(_SocketGoneBeforeRegistered())
