"""Models discovered from each upstream's /v1/models through the real proxy: listed models get
their own label and route to the upstream that lists them, vanish back to `other`, stay bounded,
and a model pinned by config keeps its upstream. Real loopback sockets, the openai SDK."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from openai import AsyncOpenAI

from proxy.app import make_app, make_runner
from proxy.config import build_config
from tests.fleet.harness import Proxy, metric_lines, serve
from tests.proxy.fakes import CHAT_BODY, FakeUpstream


def chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def upstream_pair() -> AsyncIterator[list[tuple[FakeUpstream, str]]]:
    out, runners = [], []
    for name in ("a", "b"):
        fake = FakeUpstream(name=name, models=())
        app = web.Application()
        app.router.add_route("*", "/v1/{tail:.*}", fake.handle)
        runner, port = await serve(app)
        runners.append(runner)
        out.append((fake, f"http://127.0.0.1:{port}/v1"))
    yield out
    for runner in runners:
        await runner.cleanup()


async def start(upstreams: list[dict[str, Any]]) -> tuple[Proxy, web.AppRunner]:
    app = make_app(build_config({"upstreams": upstreams}, {}))
    runner = make_runner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return Proxy(f"http://127.0.0.1:{runner.addresses[0][1]}", app), runner


def chats(fake: FakeUpstream) -> list[str]:
    return [
        orjson.loads(r.body)["model"] for r in fake.requests if r.path.endswith("/chat/completions")
    ]


def discovering(name: str, url: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "base_url": url,
            "model_discovery": {"enabled": True, "refresh_seconds": 0.05}, **extra}  # fmt: skip


async def test_listed_models_get_their_own_label_and_vanish_back_to_other(
    upstream_pair: Any,
) -> None:
    (fake, url), _ = upstream_pair
    fake.models = ("alpha", "beta")
    proxy, runner = await start([discovering("vllm", url)])
    try:
        async with AsyncOpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0) as oai:
            await oai.chat.completions.create(**chat("alpha"))
            await oai.chat.completions.create(**chat("unknown"))
            fake.models = ("beta",)  # alpha is no longer served
            await asyncio.sleep(0.3)
            await oai.chat.completions.create(**chat("alpha"))
            await oai.chat.completions.create(**chat("beta"))
        metrics = await proxy.metrics()
    finally:
        await runner.cleanup()
    requests = metric_lines(metrics, "tbg_requests_total{")
    chat_200 = {k: v for k, v in requests.items() if 'route="chat"' in k}
    assert chat_200 == {
        'tbg_requests_total{model_name="alpha",route="chat",status="200",upstream="vllm"}': 1.0,
        'tbg_requests_total{model_name="other",route="chat",status="200",upstream="vllm"}': 2.0,
        'tbg_requests_total{model_name="beta",route="chat",status="200",upstream="vllm"}': 1.0,
    }
    assert 'tbg_discovered_models{upstream="vllm"} 1.0' in metrics
    assert chats(fake) == ["alpha", "unknown", "alpha", "beta"]  # bodies forwarded untouched


async def test_discovered_models_route_to_their_upstream_and_pinned_config_wins(
    upstream_pair: Any,
) -> None:
    (fake_a, url_a), (fake_b, url_b) = upstream_pair
    fake_b.models = ("shared", "b-only", "b2", "b3")
    proxy, runner = await start(
        [
            {"name": "a", "base_url": url_a, "models": ["shared"]},
            discovering("b", url_b, model_discovery={"enabled": True, "max_models": 3}),
        ]
    )
    try:
        async with AsyncOpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0) as oai:
            for model in ("shared", "b-only", "b2", "b3"):
                await oai.chat.completions.create(**chat(model))
        metrics = await proxy.metrics()
    finally:
        await runner.cleanup()
    assert chats(fake_a) == ["shared", "b3"]  # pinned to a; b3 is past b's max_models: default
    assert chats(fake_b) == ["b-only", "b2"]
    requests = metric_lines(metrics, "tbg_requests_total{")
    assert (
        requests['tbg_requests_total{model_name="shared",route="chat",status="200",upstream="a"}']
        == 1
    )
    assert (
        requests['tbg_requests_total{model_name="b-only",route="chat",status="200",upstream="b"}']
        == 1
    )
    assert (
        requests['tbg_requests_total{model_name="other",route="chat",status="200",upstream="a"}']
        == 1
    )
    # b lists 3 (the bound), of which 2 route to it ("shared" is a's)
    assert 'tbg_discovered_models{upstream="b"} 2.0' in metrics


async def test_a_failing_listing_keeps_the_last_models() -> None:
    state: dict[str, Any] = {"fail": False, "listings": 0}

    async def models(_request: web.Request) -> web.Response:
        state["listings"] += 1
        if state["fail"]:
            return web.Response(status=503, text="overloaded")
        return web.json_response({"object": "list", "data": [{"id": "alpha", "object": "model"}]})

    async def chat_completions(_request: web.Request) -> web.Response:
        return web.Response(body=CHAT_BODY, content_type="application/json")

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat_completions)
    upstream_runner, port = await serve(app)
    proxy, runner = await start([discovering("vllm", f"http://127.0.0.1:{port}/v1")])
    try:
        state["fail"] = True
        before = state["listings"]
        await asyncio.sleep(0.3)
        assert state["listings"] >= before + 3  # refreshed, and failing
        async with AsyncOpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0) as oai:
            await oai.chat.completions.create(**chat("alpha"))
        metrics = await proxy.metrics()
    finally:
        await runner.cleanup()
        await upstream_runner.cleanup()
    assert (
        'tbg_requests_total{model_name="alpha",route="chat",status="200",upstream="vllm"} 1.0'
        in metrics
    )
    refreshes = metric_lines(metrics, "tbg_discovery_refreshes_total")
    assert (
        refreshes['tbg_discovery_refreshes_total{kind="models",outcome="error",upstream="vllm"}']
        >= 3
    )
    assert (
        refreshes['tbg_discovery_refreshes_total{kind="models",outcome="ok",upstream="vllm"}'] >= 1
    )
