"""Run the real proxy (`proxy.app.make_app`) in-process, on its own event loop in a thread.

    with ProxyThread(upstream_base_url) as proxy:
        client = OpenAI(base_url=proxy.base_url, api_key="x")

A thread with its own loop lets one proxy serve a whole test session (session-scoped fixture) while
tests use either the sync SDK or the async one on pytest-asyncio's per-test loops.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from proxy.app import make_app, make_runner
from proxy.config import build_config
from tests.integration.loop_thread import LoopServer


class ProxyThread(LoopServer):
    """The proxy on 127.0.0.1:<free port>, forwarding everything to one upstream (shadow replay
    off unless a `shadow` section is given)."""

    def __init__(
        self,
        upstream_base_url: str,
        *,
        name: str = "upstream",
        shadow: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__("proxy")
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

    async def _runner(self) -> web.AppRunner:
        self.app = make_app(self.config)
        return make_runner(self.app)
