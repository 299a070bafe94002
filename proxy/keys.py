"""The app keys (typed `web.AppKey`s) under which `make_app` stores the proxy's per-app objects.

Re-exported by proxy/app.py; they live here so handler modules can import them without a cycle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy.config import Config
from proxy.inflight import InFlight
from proxy.metrics import ProxyMetrics
from proxy.upstreams import Upstreams


@dataclass(slots=True)
class Lifecycle:
    """Per-app run state: `draining` flips to True when shutdown starts (readyz then says 503);
    `active` holds the tasks of requests whose handler is running (proxy.connections drains them:
    waits, then cancels those left at the deadline)."""

    started: bool = False
    draining: bool = False
    active: set[asyncio.Task[Any]] = field(default_factory=set)
    drained: asyncio.Event | None = None  # set by the last request to end once draining


@dataclass(slots=True)
class Exposition:
    """Pre-rendered exposition text appended to /metrics after the registry's own: the shadow
    view's families, rendered off the event loop whenever the view changes."""

    parts: list[Callable[[], bytes]] = field(default_factory=list)


CONFIG = web.AppKey("tbg_config", Config)
REGISTRY = web.AppKey("tbg_registry", CollectorRegistry)
IN_FLIGHT = web.AppKey("tbg_in_flight", InFlight)
METRICS = web.AppKey("tbg_metrics", ProxyMetrics)
UPSTREAMS = web.AppKey("tbg_upstreams", Upstreams)  # set during startup (needs the running loop)
LIFECYCLE = web.AppKey("tbg_lifecycle", Lifecycle)
EXPOSITION = web.AppKey("tbg_exposition", Exposition)
