"""`make_app(config)`: the one place that wires the proxy together.

Per app: a CollectorRegistry (`app[REGISTRY]`), the in-flight counter (`app[IN_FLIGHT]`), the
config (`app[CONFIG]`), and, from startup to cleanup, the upstreams with their one keep-alive
connection pool (`app[UPSTREAMS]`, proxy/h1.py). Run it with `make_runner(app)` so a client
disconnect cancels the handler (and with it the upstream request) and shutdown drains in-flight
requests.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from proxy import errors
from proxy.config import Config
from proxy.connections import ProxyRunner, count_active
from proxy.discovery import Resolver
from proxy.fleet import FLEET, install_fleet
from proxy.forward import Forwarder
from proxy.inflight import InFlight
from proxy.keys import (
    CONFIG,
    EXPOSITION,
    IN_FLIGHT,
    LIFECYCLE,
    METRICS,
    REGISTRY,
    UPSTREAMS,
    Exposition,
    Lifecycle,
)
from proxy.metrics import ProxyMetrics
from proxy.probe import PROBE, UpstreamProbe
from proxy.status import render_text, wants_text
from proxy.tap import Tap
from proxy.ui.page import install_ui, page_response, wants_html
from proxy.upstreams import Upstreams, new_session

__all__ = [
    "CONFIG",
    "IN_FLIGHT",
    "LIFECYCLE",
    "METRICS",
    "REGISTRY",
    "UPSTREAMS",
    "make_app",
    "make_runner",
]

log = logging.getLogger("tbg.proxy")


def make_app(
    config: Config, *, tap: Tap | None = None, resolver: Resolver | None = None
) -> web.Application:
    """Build the proxy application.

    `tap` is the shadow seam (proxy/tap.py). When None and the config has a `shadow:` section, the
    shadow path builds its own tap (proxy/shadow/wiring.py) from the config load_config validated.
    Every upstream exchange goes through one client, proxy/h1.py (`app[UPSTREAMS].pool`).
    `resolver` resolves the names of `discovery.dns` upstreams (default: the loop's getaddrinfo).
    """
    registry = CollectorRegistry(auto_describe=True)
    in_flight = InFlight()
    metrics = ProxyMetrics(registry, (u.name for u in config.upstreams), in_flight)
    app = web.Application(
        handler_args={"max_field_size": 65536},
        middlewares=[count_active, errors.error_middleware(metrics.internal_errors)],
    )
    app[CONFIG] = config
    app[REGISTRY] = registry
    app[IN_FLIGHT] = in_flight
    app[METRICS] = metrics
    app[LIFECYCLE] = Lifecycle()
    app[EXPOSITION] = Exposition()
    app.cleanup_ctx.append(_upstreams_ctx)
    install_fleet(app, resolver)  # endpoints from DNS, models from /v1/models (proxy/fleet.py)
    app.on_shutdown.append(_mark_draining)

    if tap is None and config.shadow_config.enabled:
        from proxy.shadow.wiring import install_shadow  # numpy/scipy only when shadow is configured

        tap = install_shadow(app, config)
        if tap is not None and FLEET in app:
            app[FLEET].running = tap.load.scraped
    if tap is None:
        app.router.add_get("/tbg", _tbg_off)
    forward = Forwarder(config, metrics, in_flight, tap)
    install_ui(app)  # the live page, /ui
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_route("*", "/v1/{tail:.*}", forward.handle)
    app.router.add_route("*", "/{tail:.*}", _not_found)
    return app


# Client connections: aiohttp arms the keep-alive timer when a connection opens and again after each
# response, and incoming bytes do not re-arm it, so it bounds both an idle keep-alive connection and
# a request head dribbled one byte at a time (slowloris). The body, the response writes, the
# connection count and the drain are bounded by the forwarder and proxy/connections.py (see
# docs/configuration.md, "Client connections").


def make_runner(app: web.Application, *, keepalive_timeout: float | None = None) -> web.AppRunner:
    """A runner with the proxy's semantics: handlers are cancelled when their client disconnects,
    aiohttp's text access log is off (the proxy logs JSON itself), shutdown waits up to
    `drain_seconds` for in-flight requests (then about a second at most), at most
    `max_connections` client connections are open, and idle or slow-to-send client connections are
    closed after `keepalive_timeout` seconds (default: the config's `client_keepalive_seconds`)."""
    config = app[CONFIG]
    return ProxyRunner(
        app,
        drain_seconds=config.drain_seconds,
        max_connections=config.max_connections,
        handler_cancellation=True,
        access_log=None,
        keepalive_timeout=config.client_keepalive_seconds
        if keepalive_timeout is None
        else keepalive_timeout,
    )


async def _upstreams_ctx(app: web.Application) -> AsyncIterator[None]:
    pool = new_session()
    app[UPSTREAMS] = Upstreams(app[CONFIG], pool, app[IN_FLIGHT])
    app[PROBE] = UpstreamProbe(app[UPSTREAMS])
    app[PROBE].start()  # warns about a wrong upstream; /readyz waits for its first answer
    app[LIFECYCLE].started = True
    try:
        yield
    finally:
        await app[PROBE].close()
        await pool.close()


async def _mark_draining(app: web.Application) -> None:
    app[LIFECYCLE].draining = True


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


async def _readyz(request: web.Request) -> web.Response:
    state = request.app[LIFECYCLE]
    if not state.started or state.draining:
        return web.Response(
            status=503,
            body=orjson.dumps({"status": "draining" if state.draining else "starting"}),
            content_type="application/json",
        )
    reachable, probes = request.app[PROBE].ready()  # policy: proxy/probe.py
    if not reachable:
        answered = any(r.reachable for r in probes.values())
        body = {
            "status": "probing upstreams"
            if reachable is None
            else ("no usable upstream" if answered else "no upstream reachable"),
            "upstreams": {name: r.to_json() for name, r in probes.items()},
        }
        return web.Response(status=503, body=orjson.dumps(body), content_type="application/json")
    return web.Response(body=b'{"status":"ready"}', content_type="application/json")


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    body += b"".join(part() for part in request.app[EXPOSITION].parts)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _tbg_off(request: web.Request) -> web.Response:
    """GET /tbg without shadow replay: say so and how to turn it on, instead of a bare 404."""
    if wants_html(request):
        return page_response(request)  # the live page says the same
    body = {
        "shadow": "off",
        "estimates": [],
        "message": (
            "Shadow replay is off, so nothing is measured. Turn it on with `tbg serve --upstream URL "
            "--model NAME --sample-rate 0.1`, or a `shadow:` section in the config file "
            "(`enabled: true`, `sample_rate`, `replays`; see docs/configuration.md)."
        ),
    }
    if wants_text(request.query, request.headers.get("Accept", "")):
        return web.Response(text=render_text(body) + "\n", content_type="text/plain")
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def _not_found(request: web.Request) -> web.Response:
    raise errors.not_found(request.path)  # mapped to its body by errors.error_middleware
