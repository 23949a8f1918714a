"""What the MQTT bridge takes in, bounded: received messages waiting to be routed, and commands
waiting for their device.

- :class:`Backlog` is the queue the bridge gives aiomqtt for received messages: when it is full the
  *oldest* message goes, never the newest, so a burst keeps the command a user sent last.
- :class:`Commands` holds the commands on ``.../set`` per device: one of ours running (or waiting
  for the device), and the latest one behind it. A newer command replaces the waiting one
  (``superseded``); a burst coalesces to its last word, never reorders, and costs one task per
  device, not one per command. An interrupting command (a ``STOP``) never waits its turn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import aiomqtt

from controller.security.auth import Session
from controller.wire.owned import OwnedTasks

Command = tuple[Session, str, dict[str, Any]]  # (the session it came on, action, params)


class Backlog(asyncio.Queue[aiomqtt.Message]):
    """aiomqtt's queue of received messages, bounded the other way round: when it is full the oldest
    message goes, not the newest."""

    @staticmethod
    def dropped() -> None:
        """Told of each message dropped (a bridge's subclass counts it)."""

    def put_nowait(self, item: aiomqtt.Message) -> None:
        if self.full():
            self.get_nowait()
            self.dropped()
        super().put_nowait(item)


class Commands:
    """Per device: one command running, the latest waiting. *act* runs one; *replaced* is told of each
    command that gives way to a later one without running."""

    def __init__(self, act: Callable[[str, Session, str, dict[str, Any]], Coroutine[Any, Any, None]], tasks: OwnedTasks,
                 replaced: Callable[[], None]) -> None:
        self._act = act
        self._tasks = tasks  # the bridge's commands in flight (waited for at shutdown)
        self._replaced = replaced
        self._driving: set[str] = set()  # devices with a command of ours in the dispatcher
        self._next: dict[str, Command] = {}  # device -> the command after the running one

    def submit(self, name: str, command: Command, *, interrupts: bool) -> None:
        if name in self._next:
            del self._next[name]  # the command that waited is replaced: the user's last word wins
            self._replaced()
        if interrupts:  # a STOP never waits its turn: it interrupts what runs
            self._tasks.spawn(self._act(name, *command))
        elif name in self._driving:  # one runs: this one waits behind it
            self._next[name] = command
        else:
            self._driving.add(name)
            self._tasks.spawn(self._drive(name, command))

    def drop_waiting(self) -> int:
        """Forget every command not yet started (the link it came on is gone); how many there were."""
        dropped = len(self._next)
        self._next.clear()
        return dropped

    async def _drive(self, name: str, command: Command) -> None:
        """Run *name*'s commands one at a time: this one, then the latest that arrived meanwhile."""
        try:
            next_command: Command | None = command
            while next_command is not None:
                await self._act(name, *next_command)
                next_command = self._next.pop(name, None)
        finally:
            self._driving.discard(name)
