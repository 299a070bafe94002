"""An upstream discovered from DNS, through the real proxy: several servers on distinct 127.0.0.1
ports behind one name (an injected resolver), the real openai SDK as client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from openai import AsyncOpenAI

from proxy.app import make_app, make_runner
from proxy.config import build_config
from tests.fleet.harness import NAME, FakeResolver, Proxy, metric_lines, proxy_for, serve
from tests.proxy.fakes import FakeUpstream

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def pods() -> AsyncIterator[list[tuple[FakeUpstream, int, web.AppRunner]]]:
    started = []
    for i in range(3):
        fake = FakeUpstream(name=f"pod{i}")
        app = web.Application()
        app.router.add_route("*", "/v1/{tail:.*}", fake.handle)
        runner, port = await serve(app)
        started.append((fake, port, runner))
    yield started
    for _, _, runner in started:
        await runner.cleanup()


def chats(fake: FakeUpstream) -> int:
    return sum(1 for r in fake.requests if r.path.endswith("/chat/completions"))


def client(proxy: Proxy) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=proxy.url + "/v1", api_key="sk-x", max_retries=0)


async def test_requests_spread_over_the_endpoints_with_the_name_as_host(pods: Any) -> None:
    resolver = FakeResolver([("127.0.0.1", port) for _, port, _ in pods])
    port0 = pods[0][1]
    async with proxy_for(resolver, port0) as proxy, client(proxy) as oai:
        for _ in range(9):
            out = await oai.chat.completions.create(**CHAT)
            assert out.choices[0].message.content == "Héllo"
        metrics = await proxy.metrics()
    # One at a time, nothing in flight anywhere: the ties go round-robin, 3 each.
    assert [chats(fake) for fake, _, _ in pods] == [3, 3, 3]
    hosts = {r.headers["Host"] for fake, _, _ in pods for r in fake.requests}
    assert hosts == {f"{NAME}:{port0}"}  # the Service name, never the address
    requests = metric_lines(metrics, "tbg_pod_requests_total")
    for _, port, _ in pods:
        assert requests[f'tbg_pod_requests_total{{pod="127.0.0.1:{port}",upstream="fleet"}}'] == 3
    assert metric_lines(metrics, "tbg_upstream_endpoints") == {
        'tbg_upstream_endpoints{state="up",upstream="fleet"}': 3.0,
        'tbg_upstream_endpoints{state="down",upstream="fleet"}': 0.0,
    }
    assert (
        'tbg_requests_total{model_name="other",route="chat",status="200",upstream="fleet"} 9.0'
        in metrics
    )


async def test_in_flight_per_endpoint_and_least_in_flight_first(pods: Any) -> None:
    resolver = FakeResolver([("127.0.0.1", port) for _, port, _ in pods[:2]])
    async with proxy_for(resolver, pods[0][1]) as proxy, client(proxy) as oai:
        held = [
            asyncio.create_task(
                oai.chat.completions.create(**CHAT, extra_headers={"x-fault": "hold"})
            )
            for _ in range(4)
        ]
        for _ in range(200):
            if sum(chats(fake) for fake, _, _ in pods) == 4:
                break
            await asyncio.sleep(0.01)
        flight = metric_lines(await proxy.metrics(), "tbg_pod_in_flight_requests")
        assert flight == {
            f'tbg_pod_in_flight_requests{{pod="127.0.0.1:{port}",upstream="fleet"}}': 2.0
            for _, port, _ in pods[:2]
        }
        # A fifth request goes to... either: both have two. A new pod with none gets the next.
        resolver.answer.append(("127.0.0.1", pods[2][1]))
        await asyncio.sleep(0.2)  # a few refreshes
        await oai.chat.completions.create(**CHAT)
        assert chats(pods[2][0]) == 1
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
        await asyncio.sleep(0.05)
        flight = metric_lines(await proxy.metrics(), "tbg_pod_in_flight_requests")
    assert set(flight.values()) == {0.0} and len(flight) == 3


async def test_an_endpoint_that_refuses_is_skipped_then_used_again(pods: Any) -> None:
    resolver = FakeResolver([("127.0.0.1", port) for _, port, _ in pods])
    gone_fake, gone_port, gone_runner = pods[2]
    up = {"discovery": {"dns": True, "refresh_seconds": 0.05, "down_seconds": 0.3}}
    async with proxy_for(resolver, pods[0][1], up) as proxy, client(proxy) as oai:
        await gone_runner.cleanup()  # the pod dies; DNS still lists it
        for _ in range(6):  # none fails: the refused address is left for another
            await oai.chat.completions.create(**CHAT)
        metrics = await proxy.metrics()
        assert chats(pods[0][0]) + chats(pods[1][0]) == 6
        assert 'tbg_upstream_endpoints{state="down",upstream="fleet"} 1.0' in metrics
        assert 'tbg_upstream_errors_total{kind="connect",upstream="fleet"} 1.0' in metrics
        # DNS drops it: its series go, the set is two.
        resolver.answer.remove(("127.0.0.1", gone_port))
        await asyncio.sleep(0.2)
        metrics = await proxy.metrics()
        assert f"127.0.0.1:{gone_port}" not in metrics
        assert 'tbg_upstream_endpoints{state="up",upstream="fleet"} 2.0' in metrics
        # It comes back (a new server on that port) and is listed again: it gets requests.
        app = web.Application()
        app.router.add_route("*", "/v1/{tail:.*}", gone_fake.handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", gone_port).start()
        try:
            resolver.answer.append(("127.0.0.1", gone_port))
            await asyncio.sleep(0.4)  # refreshed, and past down_seconds
            for _ in range(6):
                await oai.chat.completions.create(**CHAT)
            assert chats(gone_fake) == 2
            metrics = await proxy.metrics()
            assert (
                f'tbg_pod_requests_total{{pod="127.0.0.1:{gone_port}",upstream="fleet"}} 2.0'
                in metrics
            )
        finally:
            await runner.cleanup()


async def test_dns_refresh_and_a_failed_resolution_keeps_the_set(pods: Any) -> None:
    resolver = FakeResolver([("127.0.0.1", pods[0][1])])
    async with proxy_for(resolver, pods[0][1]) as proxy, client(proxy) as oai:
        await oai.chat.completions.create(**CHAT)
        assert chats(pods[0][0]) == 1
        before = resolver.calls
        await asyncio.sleep(0.3)
        assert resolver.calls >= before + 3  # every refresh_seconds (0.05 s)
        resolver.answer = [("127.0.0.1", pods[1][1])]  # the pod was replaced
        await asyncio.sleep(0.2)
        await oai.chat.completions.create(**CHAT)
        assert chats(pods[1][0]) == 1
        resolver.fail = True  # DNS outage: the last set stays
        await asyncio.sleep(0.2)
        await oai.chat.completions.create(**CHAT)
        assert chats(pods[1][0]) == 2
        metrics = await proxy.metrics()
    refreshes = metric_lines(metrics, "tbg_discovery_refreshes_total")
    assert (
        refreshes[
            'tbg_discovery_refreshes_total{kind="endpoints",outcome="error",upstream="fleet"}'
        ]
        >= 2
    )
    assert (
        refreshes['tbg_discovery_refreshes_total{kind="endpoints",outcome="ok",upstream="fleet"}']
        >= 5
    )


async def test_pod_labels_are_bounded_and_the_rest_pooled(pods: Any) -> None:
    resolver = FakeResolver([("127.0.0.1", port) for _, port, _ in pods])
    up = {"discovery": {"dns": True, "refresh_seconds": 0.05, "max_pod_labels": 1}}
    async with proxy_for(resolver, pods[0][1], up) as proxy, client(proxy) as oai:
        for _ in range(6):
            await oai.chat.completions.create(**CHAT)
        metrics = await proxy.metrics()
    first = min(port for _, port, _ in pods)  # labels go in address order
    assert metric_lines(metrics, "tbg_pod_requests_total") == {
        f'tbg_pod_requests_total{{pod="127.0.0.1:{first}",upstream="fleet"}}': 2.0,
        'tbg_pod_requests_total{pod="other",upstream="fleet"}': 4.0,
    }


async def test_a_static_base_url_exports_no_fleet_series(pods: Any) -> None:
    config = build_config(
        {"upstreams": [{"name": "one", "base_url": f"http://127.0.0.1:{pods[0][1]}/v1"}]}, {}
    )
    app = make_app(config, resolver=FakeResolver())
    runner = make_runner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        proxy = Proxy(f"http://127.0.0.1:{runner.addresses[0][1]}", app)
        async with client(proxy) as oai:
            await oai.chat.completions.create(**CHAT)
        metrics = await proxy.metrics()
    finally:
        await runner.cleanup()
    assert "tbg_pod_" not in metrics and "tbg_upstream_endpoints" not in metrics
    assert "tbg_discovery" not in metrics
    assert chats(pods[0][0]) == 1
