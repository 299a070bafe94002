"""Run the real proxy (`proxy.app.make_app`) in-process, on its own event loop in a thread.

    with ProxyThread(upstream_base_url) as proxy:
        client = OpenAI(base_url=proxy.base_url, api_key="x")

A thread with its own loop lets one proxy serve a whole test session (session-scoped fixture) while
tests use either the sync SDK or the async one on pytest-asyncio's per-test loops.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any

from aiohttp import web

from proxy.app import make_app, make_runner
from proxy.config import build_config
from tests.integration.loop_thread import LoopThread


class ProxyThread:
    """The proxy on 127.0.0.1:<free port>, forwarding everything to one upstream (shadow replay
    off unless a `shadow` section is given)."""

    def __init__(
        self,
        upstream_base_url: str,
        *,
        name: str = "upstream",
        shadow: Mapping[str, Any] | None = None,
    ) -> None:
        data: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": 0,
            "drain_seconds": 1,
            "log_level": "WARNING",
            "upstreams": [{"name": name, "base_url": upstream_base_url}],
        }
        if shadow is not None:
            data["shadow"] = dict(shadow)
        self.config = build_config(data, {})
        self.app: web.Application | None = None
        self.port = 0
        self._loop = LoopThread("proxy")
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    async def _start(self) -> None:
        self.app = make_app(self.config)
        self._runner = make_runner(self.app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def __enter__(self) -> ProxyThread:
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
