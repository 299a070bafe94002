"""The fleet's parts on their own: the endpoint set, the pod keys, per-pod load, the catalog, the
default resolver and the config sections."""

from __future__ import annotations

import asyncio

import pytest

from proxy.catalog import ModelCatalog, listed_models
from proxy.config import ConfigError, build_config
from proxy.discovery import LoopResolver
from proxy.endpoints import OTHER_POD, EndpointSet, address_of, pod_of
from proxy.h1 import Endpoint
from proxy.inflight import InFlight
from proxy.shadow.load import LoadTracker, load_bucket

BASE = Endpoint("llm.svc", 8000, b"llm.svc:8000", None, None)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_set(flight: InFlight, clock: Clock, max_labels: int = 2) -> EndpointSet:
    return EndpointSet("up", BASE, load=lambda pod: flight.pod("up", pod), down_seconds=5.0,
                       max_labels=max_labels, clock=clock)  # fmt: skip


def test_pod_keys_round_trip() -> None:
    assert pod_of("10.0.0.7", 8000) == "10.0.0.7:8000"
    assert pod_of("fd00::7", 8000) == "[fd00::7]:8000"
    assert address_of("[fd00::7]:8000") == ("fd00::7", 8000)
    assert address_of("10.0.0.7:8000") == ("10.0.0.7", 8000)
    assert address_of("other") is None and address_of("host.example:80") is None


def test_members_keep_the_name_as_host_and_sni() -> None:
    es = make_set(InFlight(), Clock())
    es.update([("10.0.0.1", 8000)])
    (member,) = es.members()
    assert (member.endpoint.host, member.endpoint.port) == ("10.0.0.1", 8000)
    assert member.endpoint.host_header == b"llm.svc:8000"


def test_least_in_flight_ties_round_robin_and_refused_skipped() -> None:
    flight, clock = InFlight(), Clock()
    es = make_set(flight, clock)
    es.update([("10.0.0.1", 8000), ("10.0.0.2", 8000), ("10.0.0.3", 8000)])
    picks = [es.pick() for _ in range(6)]
    assert [m.pod for m in picks if m] == ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"] * 2
    flight.enter_pod("up", "10.0.0.1:8000")
    flight.enter_pod("up", "10.0.0.2:8000")
    assert {es.pick().pod for _ in range(5)} == {"10.0.0.3:8000"}  # type: ignore[union-attr]
    es.refused(es.get("10.0.0.3:8000"))  # type: ignore[arg-type]
    assert es.pick().pod in {"10.0.0.1:8000", "10.0.0.2:8000"}  # type: ignore[union-attr]
    clock.now += 5.1  # down_seconds over
    assert es.pick().pod == "10.0.0.3:8000"  # type: ignore[union-attr]
    for m in es.members():
        es.refused(m)
        clock.now += 1
    assert es.pick().pod == "10.0.0.1:8000"  # type: ignore[union-attr]  # refused longest ago


def test_pod_labels_are_bounded_and_freed_when_a_pod_goes() -> None:
    es = make_set(InFlight(), Clock(), max_labels=2)
    es.update([("10.0.0.1", 8000), ("10.0.0.2", 8000), ("10.0.0.3", 8000)])
    labels = {m.pod: m.label for m in es.members()}
    assert labels == {"10.0.0.1:8000": "10.0.0.1:8000", "10.0.0.2:8000": "10.0.0.2:8000",
                      "10.0.0.3:8000": OTHER_POD}  # fmt: skip
    added, removed = es.update([("10.0.0.2", 8000), ("10.0.0.3", 8000), ("10.0.0.9", 8000)])
    assert [m.pod for m in removed] == ["10.0.0.1:8000"]
    assert [m.pod for m in added] == ["10.0.0.9:8000"]
    labels = {m.pod: m.label for m in es.members()}
    assert labels["10.0.0.3:8000"] == "10.0.0.3:8000"  # the freed label: to a pooled pod first
    assert labels["10.0.0.9:8000"] == OTHER_POD  # no label left for the newcomer
    assert sum(1 for v in labels.values() if v != OTHER_POD) == 2


def test_in_flight_per_pod_leaves_nothing_behind() -> None:
    flight = InFlight()
    flight.enter_pod("up", "a")
    flight.enter_pod("up", "a")
    assert flight.pod("up", "a") == 2 and flight.pod("up", "b") == 0
    flight.leave_pod("up", "a")
    flight.leave_pod("up", "a")
    assert flight._pods == {}


class Pods:
    def __init__(self, texts: dict[str, str]) -> None:
        self.texts = texts
        self.asked: list[str | None] = []

    async def fetch_metrics(self, upstream: str, pod: str | None = None) -> str:
        self.asked.append(pod)
        if pod is None:
            return "vllm:num_requests_running 5\n"
        return self.texts[pod]

    def pods(self, upstream: str) -> tuple[str, ...]:
        return tuple(self.texts)


async def test_load_per_pod_from_in_flight_replays_and_each_pods_metrics() -> None:
    flight = InFlight()
    tracker = LoadTracker(flight)
    for _ in range(3):
        flight.enter_pod("up", "a")
        flight.enter("up")
    assert tracker.current("up", "a") == 3 and tracker.current("up", "b") == 0
    assert tracker.replay_started("up", "b") == 1  # the replay counts itself, on its pod
    assert tracker.current("up") == 4  # the upstream as a whole: 3 primaries + 1 replay
    tracker.replay_finished("up", "b")
    assert tracker.current("up", "b") == 0
    fetcher = Pods(
        {"a": "vllm:num_requests_running 1\n", "b": 'vllm:num_requests_running{m="x"} 40\n'}
    )
    tracker.start_polling(fetcher, ["up"], 0.01, fetcher.pods)
    await asyncio.sleep(0.1)
    assert None not in fetcher.asked  # each pod, never the name
    assert tracker.current("up", "a") == 3  # its own 1 running < this proxy's 3
    assert load_bucket(tracker.current("up", "b")) == "64+"
    del fetcher.texts["b"]  # the pod went away: forgotten
    await asyncio.sleep(0.1)
    assert tracker.scraped("up", "b") is None and tracker.current("up", "b") == 0
    await tracker.stop()


def test_catalog_pinned_first_then_listed_in_config_order() -> None:
    catalog = ModelCatalog(["a", "b"], {"pinned": "b"})
    catalog.update("b", ["x", "pinned"])
    catalog.update("a", ["x", "pinned"])
    assert catalog.upstream_of("x") == "a"  # listed by both: the first upstream in config
    assert catalog.upstream_of("pinned") == "b"
    assert catalog.routed_here("a") == ("x",)
    catalog.update("a", [])
    assert catalog.upstream_of("x") == "b"
    assert listed_models({"data": [{"id": "m1"}, {"id": "m1"}, {"id": "m2"}, {"x": 1}]}, 5) == (
        "m1", "m2")  # fmt: skip
    assert listed_models({"data": [{"id": f"m{i}"} for i in range(9)]}, 3) == ("m0", "m1", "m2")
    with pytest.raises(ValueError, match="no `data` list"):
        listed_models({"detail": "Not Found"}, 3)


async def test_the_default_resolver_asks_the_system() -> None:
    answer = await LoopResolver().resolve("127.0.0.1", 8123)
    assert answer == (("127.0.0.1", 8123),)


def test_config_sections_default_off_and_validate() -> None:
    config = build_config({"upstreams": [{"name": "u", "base_url": "http://x:1/v1"}]}, {})
    (up,) = config.upstreams
    assert not up.discovery.dns and not up.model_discovery.enabled
    with pytest.raises(ConfigError, match=r"upstreams\.0\.discovery\.refresh_seconds|"
                                          r"upstreams\[0\]\.discovery\.refresh_seconds"):  # fmt: skip
        build_config({"upstreams": [{"name": "u", "base_url": "http://x:1/v1",
                                     "discovery": {"dns": True, "refresh_seconds": 0}}]}, {})  # fmt: skip
    with pytest.raises(ConfigError, match="max_models"):
        build_config({"upstreams": [{"name": "u", "base_url": "http://x:1/v1",
                                     "model_discovery": {"max_models": 0}}]}, {})  # fmt: skip
