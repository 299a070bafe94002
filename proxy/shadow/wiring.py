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
from proxy.shadow.aggregator import online_config
from proxy.shadow.api import make_handler
from proxy.shadow.history import install_history
from proxy.shadow.metrics import LiveCollector, ShadowExposition
from proxy.shadow.process import WorkerSpec
from proxy.shadow.tap import ShadowTap
from proxy.shadow.transport import UpstreamTransport

__all__ = ["SHADOW", "UpstreamTransport", "install_shadow"]

SHADOW = web.AppKey("tbg_shadow", ShadowTap)


def install_shadow(
    app: web.Application, config: Config, *, worker: str | None = None, nice: int | None = None
) -> ShadowTap | None:
    """Build and register the shadow path when enabled; returns the tap for the forwarder.

    `worker`: "inline" runs replays and comparisons on the proxy's event loop (and a worker
    thread); "process" runs them in a separate shadow worker process (proxy.shadow.process), so
    that the primaries' loop only samples and hands off. `nice`: added to the worker process's
    niceness so that on a busy machine the kernel runs the primaries first (0 keeps the proxy's
    priority). None: the config's `shadow.worker` / `shadow.worker_nice`.
    """
    shadow = config.shadow_config  # validated, replay keys resolved, by load_config
    if not shadow.enabled:
        return None
    mode = shadow.worker if worker is None else worker
    if mode not in ("inline", "process"):
        raise ValueError(f"worker must be 'inline' or 'process', not {mode!r}")
    nice = shadow.worker_nice if nice is None else nice
    models = tuple(dict.fromkeys(m for u in config.upstreams for m in u.models))
    exposition = ShadowExposition(shadow, models, online_config(shadow).grid)
    transport = UpstreamTransport(lambda: app[UPSTREAMS], config.replay_keys)
    spec = WorkerSpec(config, nice=nice) if mode == "process" else None
    tap = ShadowTap(shadow, transport, app[IN_FLIGHT], render=exposition.render, worker=spec)
    app[SHADOW] = tap
    tap.on_internal_error = app[METRICS].internal_errors.labels("shadow").inc
    tap.prime([(u.name, m) for u in config.upstreams for m in u.models])
    app[REGISTRY].register(LiveCollector(tap.queue_depth, tap.load.replays_in_flight))
    app[EXPOSITION].parts.append(tap.aggregator.exposition)
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
