"""Wires the fleet into the app: endpoint and model discovery (proxy/discovery.py) in the app's
cleanup context, after the upstreams exist and before the shadow path starts, and their /metrics
collector (proxy/fleet_metrics.py). Called once by `make_app`; a config without `discovery.dns`
or `model_discovery` starts no task and exports no fleet series.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from proxy.discovery import Discoverer, LoopResolver, Resolver
from proxy.fleet_metrics import FleetCollector
from proxy.keys import CONFIG, IN_FLIGHT, METRICS, REGISTRY, UPSTREAMS

log = logging.getLogger("tbg.discovery")

FLEET = web.AppKey("tbg_fleet", FleetCollector)
FIRST_ROUND_S = 5.0  # the first resolution and listing, awaited at start, at most this long


def install_fleet(app: web.Application, resolver: Resolver | None) -> None:
    config = app[CONFIG]
    wanted = tuple(u for u in config.upstreams if u.discovery.dns or u.model_discovery.enabled)
    if not wanted:
        return
    collector = FleetCollector(lambda: app.get(UPSTREAMS), app[IN_FLIGHT])
    app[FLEET] = collector
    app[REGISTRY].register(collector)

    async def discovery(app: web.Application) -> AsyncIterator[None]:
        upstreams = app[UPSTREAMS]
        discoverer = Discoverer(
            upstreams,
            resolver or LoopResolver(),
            app[METRICS].internal_errors.labels("discovery").inc,
        )
        collector.discoverer = discoverer
        # One round first, so the first requests already go to the pods and carry model labels
        # (endpoints before models: a listing then goes to a pod, not to the bare name).
        try:
            async with asyncio.timeout(FIRST_ROUND_S):
                await asyncio.gather(
                    *(discoverer.refresh_endpoints(u) for u in wanted if u.discovery.dns)
                )
                await asyncio.gather(
                    *(discoverer.refresh_models(u) for u in wanted if u.model_discovery.enabled)
                )
        except TimeoutError:
            log.warning("first discovery round took over %.0f s; going on", FIRST_ROUND_S)
        discoverer.start(wanted)
        try:
            yield
        finally:
            await discoverer.stop()

    app.cleanup_ctx.append(discovery)
