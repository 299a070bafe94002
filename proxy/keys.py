"""The app keys (typed `web.AppKey`s) under which `make_app` stores the proxy's per-app objects.

Re-exported by proxy/app.py; they live here so handler modules can import them without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy.config import Config
from proxy.inflight import InFlight
from proxy.metrics import ProxyMetrics
from proxy.upstreams import Upstreams


@dataclass(slots=True)
class Lifecycle:
    """Per-app run state: `draining` flips to True when shutdown starts (readyz then says 503)."""

    started: bool = False
    draining: bool = False


CONFIG = web.AppKey("tbg_config", Config)
REGISTRY = web.AppKey("tbg_registry", CollectorRegistry)
IN_FLIGHT = web.AppKey("tbg_in_flight", InFlight)
METRICS = web.AppKey("tbg_metrics", ProxyMetrics)
UPSTREAMS = web.AppKey("tbg_upstreams", Upstreams)  # set during startup (needs the running loop)
LIFECYCLE = web.AppKey("tbg_lifecycle", Lifecycle)
