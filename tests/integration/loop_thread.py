"""Servers that outlive one test: an aiohttp app on its own event loop in a background thread.

A session-scoped server (the proxy, a recording shim) runs on its own loop while tests use the
sync SDK or pytest-asyncio's per-test loops.

    class Mine(LoopServer):
        async def _runner(self) -> web.AppRunner: ...
    with Mine("name") as server:
        server.base_url  # http://127.0.0.1:<free port>/v1
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

from aiohttp import web

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run `coro` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=timeout)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


class LoopServer:
    """The app that `_runner()` builds, on 127.0.0.1:<free port>, from its own loop thread."""

    def __init__(self, name: str) -> None:
        self.port = 0
        self._loop = LoopThread(name)
        self._app_runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    async def _runner(self) -> web.AppRunner:
        """The runner to serve (called on the server's loop)."""
        raise NotImplementedError

    async def _closed(self) -> None:
        """After the runner's cleanup: release what `_runner` acquired besides the app."""

    async def _start(self) -> None:
        self._app_runner = await self._runner()
        await self._app_runner.setup()
        site = web.TCPSite(self._app_runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._app_runner.addresses[0][1])

    async def _stop(self) -> None:
        if self._app_runner is not None:
            await self._app_runner.cleanup()
        await self._closed()

    def __enter__(self) -> Self:
        self._loop.start()
        self._loop.call(self._start())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._loop.call(self._stop())
        finally:
            self._loop.stop()
