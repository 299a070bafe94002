"""Keeping the fleet current: each `discovery.dns` upstream's addresses (every
`discovery.refresh_seconds`) and each `model_discovery` upstream's models (every
`model_discovery.refresh_seconds`), one owned background task per upstream and kind.

Names are resolved through a `Resolver` (default: the event loop's getaddrinfo, i.e. the system
resolver and /etc/hosts; tests inject their own). A failed resolution or listing keeps what was
known (a DNS blip must not empty the set); a name that resolves to nothing also keeps the last set.
Outcomes are counted per upstream for /metrics (proxy/fleet_metrics.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

import orjson

from proxy.catalog import listed_models
from proxy.config import UpstreamConfig
from proxy.h1 import UpstreamError
from proxy.upstreams import Upstreams

log = logging.getLogger("tbg.discovery")

LISTING_TIMEOUT_S = 5.0
OUTCOMES = ("ok", "error")
KINDS = ("endpoints", "models")


class Resolver(Protocol):
    """A name and base_url's port to (address, port) pairs (IPv4/IPv6 literals); raises OSError
    when it cannot resolve. DNS A/AAAA records keep the port; a resolver may also give each
    address its own (as SRV records would), which is how tests put several servers on one host."""

    async def resolve(self, host: str, port: int) -> tuple[tuple[str, int], ...]: ...


class LoopResolver:
    """The event loop's getaddrinfo: every A/AAAA record of `host`, in the order returned."""

    async def resolve(self, host: str, port: int) -> tuple[tuple[str, int], ...]:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
        return tuple(dict.fromkeys((str(info[4][0]), int(info[4][1])) for info in infos))


class Discoverer:
    """Owns the refresh tasks of one app; `start()` after Upstreams exist, `stop()` at cleanup."""

    def __init__(
        self,
        upstreams: Upstreams,
        resolver: Resolver,
        on_internal_error: Callable[[], None] = lambda: None,
    ) -> None:
        self._upstreams = upstreams
        self._resolver = resolver
        self._on_internal_error = on_internal_error
        self._tasks: list[asyncio.Task[None]] = []
        self.outcomes: Counter[tuple[str, str, str]] = Counter()  # (upstream, kind, outcome)

    def start(self, configs: tuple[UpstreamConfig, ...]) -> None:
        for upstream in configs:
            if upstream.discovery.dns:
                self._spawn(self._endpoints_loop(upstream), f"tbg-dns-{upstream.name}")
            if upstream.model_discovery.enabled:
                self._spawn(self._models_loop(upstream), f"tbg-models-{upstream.name}")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=name))

    # -- one refresh each (the loops call them; tests may too) ----------------------------------

    async def refresh_endpoints(self, upstream: UpstreamConfig) -> bool:
        endpoints = self._upstreams.endpoint_set(upstream.name)
        assert endpoints is not None
        base = endpoints.base
        try:
            addresses = await self._resolver.resolve(base.host, base.port)
        except OSError as exc:
            log.warning("cannot resolve %s: %s", base.host, exc, extra={"upstream": upstream.name})
            return self._count(upstream.name, "endpoints", ok=False)
        if not addresses:
            log.warning("%s resolved to no address", base.host, extra={"upstream": upstream.name})
            return self._count(upstream.name, "endpoints", ok=False)
        added, removed = endpoints.update(addresses)
        for member in removed:
            self._upstreams.pool.discard(member.endpoint)
        if added or removed:
            log.info(
                "endpoints changed",
                extra={
                    "upstream": upstream.name,
                    "added": [m.pod for m in added],
                    "removed": [m.pod for m in removed],
                    "endpoints": len(endpoints),
                },
            )
        return self._count(upstream.name, "endpoints", ok=True)

    async def refresh_models(self, upstream: UpstreamConfig) -> bool:
        ups = self._upstreams
        headers = ups.auth_headers(upstream, {})
        try:
            reply = await ups.fetch(
                upstream,
                "GET",
                ups.api_path(upstream, "/models"),
                headers,
                within=LISTING_TIMEOUT_S,
            )
            if reply.status != 200:
                raise ValueError(f"GET /models answered {reply.status}")
            models = listed_models(orjson.loads(reply.body), upstream.model_discovery.max_models)
        except (UpstreamError, ValueError) as exc:  # orjson.JSONDecodeError is a ValueError
            log.warning("model listing failed: %s", exc, extra={"upstream": upstream.name})
            return self._count(upstream.name, "models", ok=False)
        before = ups.catalog.discovered(upstream.name)
        ups.catalog.update(upstream.name, models)
        if models != before:
            log.info("models changed", extra={"upstream": upstream.name, "models": list(models)})
        return self._count(upstream.name, "models", ok=True)

    def _count(self, upstream: str, kind: str, *, ok: bool) -> bool:
        self.outcomes[(upstream, kind, "ok" if ok else "error")] += 1
        return ok

    async def _endpoints_loop(self, upstream: UpstreamConfig) -> None:
        await self._forever(upstream, self.refresh_endpoints, upstream.discovery.refresh_seconds)

    async def _models_loop(self, upstream: UpstreamConfig) -> None:
        await self._forever(upstream, self.refresh_models, upstream.model_discovery.refresh_seconds)

    async def _forever(
        self,
        upstream: UpstreamConfig,
        refresh: Callable[[UpstreamConfig], Awaitable[bool]],
        period: float,
    ) -> None:
        while True:
            try:
                await refresh(upstream)
            except Exception as exc:  # a bug: logged with its stack and counted, the loop goes on
                log.error("discovery failed", extra={"upstream": upstream.name}, exc_info=exc)
                self._on_internal_error()
            await asyncio.sleep(period)
