"""Wires the shadow path into the proxy app: takes the validated `config.shadow_config`, builds
the ShadowTap, adds its exposition to /metrics and the GET /tbg route, and owns its workers in the
app's cleanup context.
Called once from `make_app`; nothing here runs at import time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import aiohttp
from aiohttp import web

from proxy.config import Config
from proxy.keys import EXPOSITION, IN_FLIGHT, METRICS, REGISTRY, UPSTREAMS
from proxy.shadow.aggregator import online_config
from proxy.shadow.api import make_handler
from proxy.shadow.metrics import LiveCollector, ShadowExposition
from proxy.shadow.tap import ShadowTap

SHADOW = web.AppKey("tbg_shadow", ShadowTap)


class UpstreamTransport:
    """Replays through the proxy's own pooled session, with each upstream's auth and timeouts."""

    def __init__(self, app: web.Application, replay_keys: Mapping[str, str]) -> None:
        self._app = app  # Upstreams exists only once the app has started
        self._replay_keys = replay_keys  # upstream name -> dedicated replay key

    async def post_json(
        self,
        upstream: str,
        path: str,
        body: bytes,
        client_headers: Mapping[str, str],
        timeout_s: float,
    ) -> tuple[int, bytes]:
        upstreams = self._app[UPSTREAMS]
        target = upstreams.upstream_for(upstream)
        key = self._replay_keys.get(upstream)
        if key is not None:
            headers = {"Authorization": f"Bearer {key}"}
        else:
            headers = upstreams.auth_headers(target, client_headers)
        headers["Content-Type"] = "application/json"
        limit = min(timeout_s, target.timeouts.total or timeout_s)
        client_timeout = aiohttp.ClientTimeout(total=limit, connect=target.timeouts.connect)
        async with upstreams.session.post(
            upstreams.url(target, path), data=body, headers=headers, timeout=client_timeout
        ) as response:
            return response.status, await response.read()

    async def fetch_metrics(self, upstream: str) -> str:
        upstreams = self._app[UPSTREAMS]
        target = upstreams.upstream_for(upstream)
        root = target.base_url.removesuffix("/v1")
        async with upstreams.session.get(
            f"{root}/metrics", timeout=aiohttp.ClientTimeout(total=5.0)
        ) as response:
            response.raise_for_status()
            return await response.text()


def install_shadow(app: web.Application, config: Config) -> ShadowTap | None:
    """Build and register the shadow path when enabled; returns the tap for the forwarder."""
    shadow = config.shadow_config  # validated, replay keys resolved, by load_config
    if not shadow.enabled:
        return None
    models = tuple(dict.fromkeys(m for u in config.upstreams for m in u.models))
    exposition = ShadowExposition(shadow, models, online_config(shadow).grid)
    transport = UpstreamTransport(app, config.replay_keys)
    tap = ShadowTap(shadow, transport, app[IN_FLIGHT], render=exposition.render)
    app[SHADOW] = tap
    tap.on_internal_error = app[METRICS].internal_errors.labels("shadow").inc
    tap.prime([(u.name, m) for u in config.upstreams for m in u.models])
    app[REGISTRY].register(LiveCollector(tap.queue_depth, tap.load.replays_in_flight))
    app[EXPOSITION].parts.append(tap.aggregator.exposition)
    app.router.add_get("/tbg", make_handler(tap))
    upstream_names = tuple(u.name for u in config.upstreams)

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        await tap.start(upstream_names)
        yield
        await tap.stop()

    app.cleanup_ctx.append(lifecycle)
    return tap
