"""/metrics for the fleet: endpoints per upstream, per-pod load and requests, discovery outcomes.

Read at scrape time from the live sets (proxy/endpoints.py), so a pod's series disappear with it.
Series budget per replica and upstream with `discovery.dns`, L = `max_pod_labels` (default 16):
2 (`tbg_upstream_endpoints` up/down) + 3 × (L + 1) (`tbg_pod_in_flight_requests`,
`tbg_pod_requests_total`, `tbg_pod_running_requests`: the last with `load_source: vllm_metrics`
only; the + 1 is the pooled `pod="other"`) + 2 per discovery kind (`tbg_discovery_refreshes_total`
ok/error) + 1 with `model_discovery` (`tbg_discovered_models`) = 58 at most with both
(docs/deploy.md, "The fleet case"; tests/fleet/test_series_budget.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy.discovery import KINDS, OUTCOMES, Discoverer
from proxy.endpoints import OTHER_POD, EndpointSet
from proxy.inflight import InFlight
from proxy.upstreams import Upstreams

# (upstream, pod) -> the pod's own `vllm:num_requests_running`, None when not polled
RunningReader = Callable[[str, str], int | None]


class FleetCollector(Collector):
    """Registered on the app's registry by `make_app`; reads nothing before the app started."""

    def __init__(self, upstreams: Callable[[], Upstreams | None], in_flight: InFlight) -> None:
        self._upstreams = upstreams
        self._in_flight = in_flight
        self.discoverer: Discoverer | None = None
        self.running: RunningReader | None = None  # set when the shadow path polls /metrics

    def collect(self) -> Iterator[Metric]:
        upstreams = self._upstreams()
        if upstreams is None:
            return
        sets = upstreams.endpoint_sets()
        endpoints = GaugeMetricFamily(
            "tbg_upstream_endpoints",
            "Addresses an upstream's name resolved to, by state (down: refused a connection "
            "within discovery.down_seconds).",
            labels=["upstream", "state"],
        )
        in_flight = GaugeMetricFamily(
            "tbg_pod_in_flight_requests",
            "This replica's requests in flight per pod (address) of an upstream; pods past "
            'discovery.max_pod_labels pooled as pod="other".',
            labels=["upstream", "pod"],
        )
        requests = CounterMetricFamily(
            "tbg_pod_requests",
            'Requests this replica sent to each pod of an upstream (pooled pods: pod="other").',
            labels=["upstream", "pod"],
        )
        running = GaugeMetricFamily(
            "tbg_pod_running_requests",
            "vllm:num_requests_running as each pod's own /metrics last said (load_source: "
            'vllm_metrics); pooled pods summed under pod="other".',
            labels=["upstream", "pod"],
        )
        for endpoint_set in sets:
            self._one(endpoint_set, endpoints, in_flight, requests, running)
        yield from (endpoints, in_flight, requests)
        if self.running is not None:
            yield running
        yield from self._discovery(upstreams)

    def _one(
        self,
        es: EndpointSet,
        endpoints: GaugeMetricFamily,
        in_flight: GaugeMetricFamily,
        requests: CounterMetricFamily,
        running: GaugeMetricFamily,
    ) -> None:
        name = es.upstream
        members = es.members()
        down = sum(1 for m in members if es.is_down(m))
        endpoints.add_metric([name, "up"], len(members) - down)
        endpoints.add_metric([name, "down"], down)
        pooled_flight = 0
        pooled_running: int | None = None
        for m in members:
            flight = self._in_flight.pod(name, m.pod)
            seen = self.running(name, m.pod) if self.running is not None else None
            if m.label == OTHER_POD:
                pooled_flight += flight
                if seen is not None:
                    pooled_running = (pooled_running or 0) + seen
                continue
            in_flight.add_metric([name, m.label], flight)
            requests.add_metric([name, m.label], m.requests)
            if seen is not None:
                running.add_metric([name, m.label], seen)
        if any(m.label == OTHER_POD for m in members):
            in_flight.add_metric([name, OTHER_POD], pooled_flight)
            if pooled_running is not None:
                running.add_metric([name, OTHER_POD], pooled_running)
        if es.pooled_requests:  # a counter: kept once it counted, pooled pods present or not
            requests.add_metric([name, OTHER_POD], es.pooled_requests)

    def _discovery(self, upstreams: Upstreams) -> Iterator[Metric]:
        refreshes = CounterMetricFamily(
            "tbg_discovery_refreshes",
            "Endpoint (DNS) and model (/v1/models) refreshes per upstream, by outcome.",
            labels=["upstream", "kind", "outcome"],
        )
        models = GaugeMetricFamily(
            "tbg_discovered_models",
            "Models an upstream's /v1/models listed that route to it under their own label.",
            labels=["upstream"],
        )
        found = self.discoverer
        if found is None:
            return
        for upstream in upstreams.names:
            config = upstreams.upstream_for(upstream)
            on = (config.discovery.dns, config.model_discovery.enabled)
            kinds = [kind for kind, yes in zip(KINDS, on, strict=True) if yes]
            for kind in kinds:
                for outcome in OUTCOMES:
                    refreshes.add_metric(
                        [upstream, kind, outcome], found.outcomes[(upstream, kind, outcome)]
                    )
            if config.model_discovery.enabled:
                models.add_metric([upstream], len(upstreams.catalog.routed_here(upstream)))
        yield from (refreshes, models)
