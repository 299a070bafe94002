"""Wires the shadow path into the proxy app: takes the validated `config.shadow_config`, builds
the ShadowTap, adds its exposition to /metrics and the GET /tbg route, and owns its workers in the
app's cleanup context.
Called once from `make_app`; nothing here runs at import time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from proxy.config import Config
from proxy.keys import EXPOSITION, IN_FLIGHT, METRICS, REGISTRY, UPSTREAMS
from proxy.shadow.api import make_handler
from proxy.shadow.coverage import counter_samples, untapped_requests
from proxy.shadow.executor import WorkerSpec
from proxy.shadow.history import install_history
from proxy.shadow.metrics import LiveCollector, ShadowExposition
from proxy.shadow.state import online_config
from proxy.shadow.tap import ShadowTap
from proxy.shadow.transport import UpstreamTransport

__all__ = ["SHADOW", "UpstreamTransport", "install_shadow"]

SHADOW = web.AppKey("tbg_shadow", ShadowTap)


def install_shadow(app: web.Application, config: Config) -> ShadowTap | None:
    """Build and register the shadow path when enabled; returns the tap for the forwarder.

    `shadow.worker`: "inline" runs the Worker (replays and comparisons) on the proxy's event loop
    (and a worker thread); "process" runs it in the shadow worker process (proxy.shadow.executor),
    so that the primaries' loop only samples and hands off, at `shadow.worker_nice` added to its
    niceness so that on a busy machine the kernel runs the primaries first.
    """
    shadow = config.shadow_config  # validated, replay keys resolved, by load_config
    if not shadow.enabled:
        return None
    models = tuple(dict.fromkeys(m for u in config.upstreams for m in u.models))
    exposition = ShadowExposition(shadow, models, online_config(shadow).grid)
    transport = UpstreamTransport(lambda: app[UPSTREAMS], config.replay_keys)
    spec = WorkerSpec(config, nice=shadow.worker_nice) if shadow.worker == "process" else None
    tap = ShadowTap(shadow, transport, app[IN_FLIGHT], render=exposition.render, worker=spec)
    app[SHADOW] = tap
    tap.on_internal_error = app[METRICS].internal_errors.labels("shadow").inc
    tap.prime([(u.name, m) for u in config.upstreams for m in u.models])
    app[REGISTRY].register(LiveCollector(tap.queue_depth, tap.load.replays_in_flight))
    app[EXPOSITION].parts.append(tap.aggregator.exposition)
    metrics = app[METRICS]
    tap.untapped_requests = lambda: untapped_requests(counter_samples(metrics.requests))
    app.router.add_get("/tbg", make_handler(tap))
    # Registered before the tap's lifecycle, so it stops after it and keeps the final view.
    install_history(app, shadow.history, tap.view, tap.on_internal_error)
    upstream_names = tuple(u.name for u in config.upstreams)

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        await tap.start(upstream_names)
        yield
        await tap.stop()

    app.cleanup_ctx.append(lifecycle)
    return tap
