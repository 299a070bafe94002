"""Several upstream servers on distinct 127.0.0.1 ports behind one made-up name, resolved by an
injected resolver, and the real proxy in front of them (real loopback sockets)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from aiohttp import web

from proxy.app import make_app, make_runner
from proxy.config import build_config

NAME = "llm.fleet.test"  # never resolved by the system: only FakeResolver knows it


@dataclass
class FakeResolver:
    """Answers for NAME with `answer` (address, port pairs); `fail` raises like a DNS outage."""

    answer: list[tuple[str, int]] = field(default_factory=list)
    fail: bool = False
    calls: int = 0

    async def resolve(self, host: str, port: int) -> tuple[tuple[str, int], ...]:
        self.calls += 1
        if self.fail or host != NAME:
            raise OSError(f"cannot resolve {host}")
        return tuple(self.answer)


async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, runner.addresses[0][1]


@dataclass
class Proxy:
    url: str  # http://127.0.0.1:PORT
    app: web.Application

    async def metrics(self) -> str:
        async with httpx.AsyncClient() as http:
            return (await http.get(self.url + "/metrics")).text

    async def tbg(self) -> dict[str, Any]:
        async with httpx.AsyncClient() as http:
            return dict((await http.get(self.url + "/tbg")).json())


def metric_lines(text: str, prefix: str) -> dict[str, float]:
    """`name{labels}` -> value for the samples whose line starts with `prefix`."""
    out = {}
    for line in text.splitlines():
        if line.startswith(prefix):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


@contextlib.asynccontextmanager
async def proxy_for(
    resolver: FakeResolver, port: int, upstream: dict[str, Any] | None = None, **config: Any
) -> AsyncIterator[Proxy]:
    """The proxy with one upstream `http://NAME:port/v1` discovered through `resolver`."""
    up = {"name": "fleet", "base_url": f"http://{NAME}:{port}/v1",
          "discovery": {"dns": True, "refresh_seconds": 0.05}, **(upstream or {})}  # fmt: skip
    app = make_app(build_config({"upstreams": [up], **config}, {}), resolver=resolver)
    runner = make_runner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield Proxy(f"http://127.0.0.1:{runner.addresses[0][1]}", app)
    finally:
        await runner.cleanup()
