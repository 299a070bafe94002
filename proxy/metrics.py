"""The proxy's Prometheus metrics, registered on the app's own CollectorRegistry.

Names and labels follow docs/internals.md ("Proxy" table). Label values are bounded: `route` from a
fixed set, `model_name` from config or "other", `upstream` from config (plus "none" for requests
answered before routing and "merged" for the merged /v1/models listing).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from proxy.errors import WHERE
from proxy.inflight import InFlight

ROUTES = ("chat", "completions", "embeddings", "models", "responses", "other")
UPSTREAM_ERROR_KINDS = ("connect", "timeout", "reset", "protocol")
NO_UPSTREAM = "none"
MERGED_UPSTREAM = "merged"
OTHER_MODEL = "other"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_ADDED_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)

INTERNAL_ERROR_PLACES = (*WHERE, "tap", "shadow")  # request routes, then background paths


class ProxyMetrics:
    """All proxy-side collectors; one instance per app, bound to that app's registry."""

    def __init__(
        self, registry: CollectorRegistry, upstreams: Iterable[str], in_flight: InFlight
    ) -> None:
        self.requests = Counter(
            "tbg_requests_total",
            "Requests handled by the proxy.",
            ("route", "model_name", "upstream", "status"),
            registry=registry,
        )
        self.duration = Histogram(
            "tbg_request_duration_seconds",
            "Time from request received to last byte relayed.",
            ("route", "model_name", "upstream"),
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.ttfb = Histogram(
            "tbg_time_to_first_byte_seconds",
            "Time from request received to the first response body byte relayed.",
            ("route", "model_name", "upstream"),
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.upstream_errors = Counter(
            "tbg_upstream_errors_total",
            "Upstream failures by kind.",
            ("upstream", "kind"),
            registry=registry,
        )
        self.in_flight = Gauge(
            "tbg_in_flight_requests",
            "Requests currently in flight to each upstream.",
            ("upstream",),
            registry=registry,
        )
        self.added = Histogram(
            "tbg_proxy_added_seconds",
            "Time spent in the proxy itself, upstream wait excluded.",
            ("route",),
            buckets=_ADDED_BUCKETS,
            registry=registry,
        )
        self.body_too_large = Counter(
            "tbg_request_body_too_large_total",
            "Requests rejected because the body exceeded max_body_bytes.",
            ("route",),
            registry=registry,
        )
        self.auth_failures = Counter(
            "tbg_auth_failures_total",
            "Requests rejected for a missing or wrong proxy API key.",
            ("route",),
            registry=registry,
        )
        self.tap_errors = Counter(
            "tbg_tap_errors_total",
            "Exceptions raised by the shadow tap (plan, complete, rewrite); primary unaffected.",
            ("stage",),
            registry=registry,
        )
        self.internal_errors = Counter(
            "tbg_internal_errors_total",
            "Unexpected exceptions (bugs) by where they happened: a request route, the tap or the "
            "shadow path; each is logged with its stack.",
            ("where",),
            registry=registry,
        )
        for where in INTERNAL_ERROR_PLACES:
            self.internal_errors.labels(where)
        for name in upstreams:
            self.in_flight.labels(name).set_function(_InFlightReader(in_flight, name))
            for kind in UPSTREAM_ERROR_KINDS:
                self.upstream_errors.labels(name, kind)


class _InFlightReader:
    __slots__ = ("_in_flight", "_upstream")

    def __init__(self, in_flight: InFlight, upstream: str) -> None:
        self._in_flight = in_flight
        self._upstream = upstream

    def __call__(self) -> float:
        return float(self._in_flight.get(self._upstream))
