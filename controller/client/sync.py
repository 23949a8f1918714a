"""The client for plain scripts: the asyncio client on a private loop in a background thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from controller.client.link import DEFAULT_URL, Client

T = TypeVar("T")


class SyncClient:
    """The client for plain scripts: a private event loop in a background thread.

    ::

        with SyncClient("ws://127.0.0.1:8765/ws", token="demo-admin") as pictl:
            pictl.call("light.on")
            print(pictl.status()["devices"]["light"]["state"]["state"])  # "on"
    """

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="pictl-sync-client", daemon=True)
        self._thread.start()
        try:
            self._client = self._run(self._make(url, token, options))
        except BaseException:
            self._stop_loop()
            raise

    async def _make(self, url: str, token: str | None, options: dict[str, Any]) -> Client:
        return await Client(url, token, **options).connect()

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def call(self, method: str, params: dict[str, Any] | None = None, /, **kwargs: Any) -> Any:
        return self._run(self._client.call(method, params, **kwargs))

    def status(self) -> dict[str, Any]:
        return self._run(self._client.status())

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._run(self._client.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
