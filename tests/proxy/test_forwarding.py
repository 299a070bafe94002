"""End to end through the proxy on real loopback sockets, with the real openai SDK as the client."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import httpx
import openai
import orjson
import pytest
from aiohttp import web

from proxy.app import IN_FLIGHT, REGISTRY, make_app, make_runner
from proxy.config import Config, build_config
from proxy.forward import Forwarder

from .fakes import (
    CHAT_BODY,
    CHAT_EVENTS,
    COMPLETION_BODY,
    EMBEDDING_BODY,
    FakeUpstream,
    proxy_stack,
    threaded_stack,
)

MESSAGES: list[Any] = [{"role": "user", "content": "secret prompt text"}]


def single(
    *, upstream: dict[str, Any] | None = None, env: dict[str, str] | None = None, **top: Any
) -> Callable[[list[str]], Config]:
    """Config factory: one upstream "up" serving model "m" at the fake's URL."""

    def make(urls: list[str]) -> Config:
        entry = {"name": "up", "base_url": urls[0], "models": ["m"], **(upstream or {})}
        return build_config({"upstreams": [entry], **top}, env or {})

    return make


def sample(app: Any, name: str, **labels: str) -> float:
    value = app[REGISTRY].get_sample_value(name, labels)
    return 0.0 if value is None else float(value)


# -- the synchronous SDK ---------------------------------------------------------------------------


def test_sync_sdk_chat_completions_embeddings_models() -> None:
    with threaded_stack(single()) as stack:
        client = openai.OpenAI(base_url=stack.proxy_url + "/v1", api_key="sk-client")
        chat = client.chat.completions.create(model="m", messages=MESSAGES)
        assert chat.choices[0].message.content == "Héllo"
        text = client.completions.create(model="m", prompt="hi")
        assert text.choices[0].text == "Héllo"
        emb = client.embeddings.create(model="m", input="hi")
        assert emb.data[0].embedding == [0.25, -0.5, 1.0]
        assert [m.id for m in client.models.list()] == ["m"]
        chunks = list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Héllo ☃"
        assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 5
        recorded = stack.fakes[0].requests
        assert [r.path for r in recorded] == [
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/embeddings",
            "/v1/models",
            "/v1/chat/completions",
        ]
        assert recorded[0].headers["Authorization"] == "Bearer sk-client"  # passthrough


# -- the asynchronous SDK --------------------------------------------------------------------------


async def test_async_sdk_streaming_chat_and_completions() -> None:
    async with proxy_stack(single()) as stack:
        client = openai.AsyncOpenAI(base_url=stack.proxy_url + "/v1", api_key="sk")
        stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        parts = [c.choices[0].delta.content async for c in stream if c.choices]
        assert "".join(p or "" for p in parts) == "Héllo ☃"
        cstream = await client.completions.create(model="m", prompt="x", stream=True)
        assert "".join([c.choices[0].text async for c in cstream]) == "Héllo"
        await client.close()
        labels = {"route": "chat", "model_name": "m", "upstream": "up", "status": "200"}
        assert sample(stack.app, "tbg_requests_total", **labels) == 1
        assert stack.app[IN_FLIGHT].get("up") == 0


async def test_bodies_are_byte_identical_to_a_direct_call() -> None:
    async with proxy_stack(single()) as stack, httpx.AsyncClient() as http:
        direct_url, proxy_url = stack.fakes[0].url, stack.proxy_url + "/v1"
        for path, body, expected in [
            ("/chat/completions", {"model": "m", "messages": MESSAGES}, CHAT_BODY),
            ("/completions", {"model": "m", "prompt": "p"}, COMPLETION_BODY),
            ("/embeddings", {"model": "m", "input": "p"}, EMBEDDING_BODY),
            (
                "/chat/completions",
                {"model": "m", "messages": MESSAGES, "stream": True},
                b"".join(CHAT_EVENTS),
            ),
        ]:
            raw = orjson.dumps(body)
            direct = await http.post(direct_url + path, content=raw)
            proxied = await http.post(proxy_url + path, content=raw)
            assert proxied.status_code == direct.status_code == 200
            assert proxied.content == direct.content == expected
            assert proxied.headers["content-type"] == direct.headers["content-type"]
        # the request body reached the upstream unchanged too
        assert stack.fakes[0].requests[-1].body == raw


async def test_first_chunk_arrives_before_the_upstream_sends_the_second() -> None:
    fake = FakeUpstream(gate=asyncio.Event())
    async with proxy_stack(single(), [fake]) as stack:
        client = openai.AsyncOpenAI(base_url=stack.proxy_url + "/v1", api_key="sk")
        stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        iterator = stream.__aiter__()
        async with asyncio.timeout(5):  # a buffering proxy would hang here: the gate is closed
            first = await iterator.__anext__()
        assert first.choices[0].delta.role == "assistant"
        assert fake.gate is not None and not fake.gate.is_set()
        fake.gate.set()
        rest = [c async for c in iterator]
        assert len(rest) == 4  # 3 more chunks + the usage chunk; [DONE] ends the stream
        await client.close()


async def test_streaming_disconnect_cancels_the_upstream_request() -> None:
    fake = FakeUpstream(gate=asyncio.Event())
    async with proxy_stack(single(), [fake]) as stack:
        client = openai.AsyncOpenAI(base_url=stack.proxy_url + "/v1", api_key="sk")
        stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        async for _ in stream:
            break
        await stream.close()
        await client.close()
        async with asyncio.timeout(5):
            await fake.cancelled.wait()
        await _until(lambda: stack.app[IN_FLIGHT].get("up") == 0)
        labels = {"route": "chat", "model_name": "m", "upstream": "up", "status": "499"}
        await _until(lambda: sample(stack.app, "tbg_requests_total", **labels) == 1)


async def test_non_streaming_disconnect_cancels_the_upstream_request() -> None:
    async with proxy_stack(single()) as stack:
        fake = stack.fakes[0]
        client = openai.AsyncOpenAI(base_url=stack.proxy_url + "/v1", api_key="sk", max_retries=0)
        call = asyncio.create_task(
            client.chat.completions.create(
                model="m", messages=MESSAGES, extra_headers={"x-fault": "hold"}
            )
        )
        async with asyncio.timeout(5):
            await fake.started.wait()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await client.close()
        async with asyncio.timeout(5):
            await fake.cancelled.wait()
        await _until(lambda: stack.app[IN_FLIGHT].get("up") == 0)


async def test_upstream_connections_are_kept_alive_and_reused() -> None:
    async with proxy_stack(single()) as stack, httpx.AsyncClient() as http:
        for _ in range(3):
            r = await http.post(stack.proxy_url + "/v1/embeddings", json={"model": "m"})
            assert r.status_code == 200
        peers = {r.peer for r in stack.fakes[0].requests}
        assert len(peers) == 1  # one upstream connection served all three


# -- error paths -----------------------------------------------------------------------------------


def _error(response: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    assert set(error) >= {"message", "type", "code"}
    return error


async def test_upstream_refused_is_a_502_with_an_openai_error() -> None:
    refused = single()(["http://127.0.0.1:9/v1"])  # nothing listens on the discard port
    app = make_app(refused)
    runner = make_runner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/chat/completions"
        async with httpx.AsyncClient() as http:
            r = await http.post(url, json={"model": "m", "messages": MESSAGES})
        assert (r.status_code, _error(r)["code"]) == (502, "upstream_connect")
        assert sample(app, "tbg_upstream_errors_total", upstream="up", kind="connect") == 1
        client = openai.AsyncOpenAI(
            base_url=url.removesuffix("/chat/completions"), api_key="sk", max_retries=0
        )
        with pytest.raises(openai.InternalServerError) as info:
            await client.chat.completions.create(model="m", messages=MESSAGES)
        assert info.value.status_code == 502
        await client.close()
    finally:
        await runner.cleanup()


async def test_upstream_timeout_reset_and_status_codes() -> None:
    make = single(upstream={"timeouts": {"first_byte": 0.3}})
    async with proxy_stack(make) as stack, httpx.AsyncClient() as http:
        url = stack.proxy_url + "/v1/chat/completions"
        body = {"model": "m", "messages": MESSAGES}
        r = await http.post(url, json=body, headers={"x-fault": "sleep"})
        assert (r.status_code, _error(r)["code"]) == (504, "upstream_timeout")
        r = await http.post(url, json=body, headers={"x-fault": "reset"})
        assert (r.status_code, _error(r)["code"]) == (502, "upstream_reset")
        r = await http.post(url, json=body, headers={"x-fault": "teapot"})
        assert r.status_code == 418  # upstream statuses and bodies are forwarded as they are
        assert r.content == b'{"error": {"message": "short and stout"}}'
        assert r.headers["x-custom"] == "kept" and "keep-alive" not in r.headers
        for kind in ("timeout", "reset"):
            assert sample(stack.app, "tbg_upstream_errors_total", upstream="up", kind=kind) == 1


async def test_upstream_reset_mid_stream_truncates_the_client_stream() -> None:
    async with proxy_stack(single()) as stack, aiohttp.ClientSession() as http:
        body = {"model": "m", "messages": MESSAGES, "stream": True}
        async with http.post(
            stack.proxy_url + "/v1/chat/completions", json=body, headers={"x-fault": "reset-mid"}
        ) as resp:
            assert resp.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
        await _until(
            lambda: sample(stack.app, "tbg_upstream_errors_total", upstream="up", kind="reset") == 1
        )


async def test_malformed_json_and_oversized_bodies() -> None:
    async with proxy_stack(single(max_body_bytes=2048)) as stack, httpx.AsyncClient() as http:
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
            r = await http.post(stack.proxy_url + path, content=b'{"model": "m", ')
            assert (r.status_code, _error(r)["code"]) == (400, "invalid_json")
        r = await http.post(stack.proxy_url + "/v1/chat/completions", content=b"[1, 2]")
        assert r.status_code == 400
        client = openai.AsyncOpenAI(base_url=stack.proxy_url + "/v1", api_key="sk", max_retries=0)
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x" * 4000}]
            )
        assert info.value.status_code == 413
        await client.close()
        assert sample(stack.app, "tbg_request_body_too_large_total", route="chat") == 1
        assert len(stack.fakes[0].requests) == 0  # nothing bad reached the upstream


async def test_other_v1_paths_pass_through_with_query_strings() -> None:
    async with proxy_stack(single()) as stack, httpx.AsyncClient() as http:
        r = await http.get(stack.proxy_url + "/v1/files/abc?purpose=fine-tune&x=1")
        assert r.json() == {"path": "files/abc", "query": "purpose=fine-tune&x=1"}
        r = await http.get(stack.proxy_url + "/nope")
        assert (r.status_code, _error(r)["code"]) == (404, "not_found")
        labels = {"route": "other", "model_name": "other", "upstream": "up", "status": "200"}
        assert sample(stack.app, "tbg_requests_total", **labels) == 1


# -- auth ------------------------------------------------------------------------------------------


async def test_proxy_api_keys_are_enforced() -> None:
    make = single(api_keys_env="KEYS", env={"KEYS": "good1,good2"})
    async with proxy_stack(make) as stack:
        base = stack.proxy_url + "/v1"
        for key in ("good1", "good2"):
            ok = openai.AsyncOpenAI(base_url=base, api_key=key)
            assert (await ok.embeddings.create(model="m", input="x")).data
            await ok.close()
        bad = openai.AsyncOpenAI(base_url=base, api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as info:
            await bad.chat.completions.create(model="m", messages=MESSAGES)
        assert info.value.code == "invalid_api_key"
        await bad.close()
        async with httpx.AsyncClient() as http:  # health and metrics stay open
            assert (await http.get(stack.proxy_url + "/healthz")).status_code == 200
            r = await http.get(stack.proxy_url + "/v1/models")
            assert r.status_code == 401
        assert sample(stack.app, "tbg_auth_failures_total", route="chat") == 1
        assert len(stack.fakes[0].requests) == 2


async def test_inject_replaces_the_clients_authorization() -> None:
    make = single(upstream={"api_key_env": "UP_KEY"}, env={"UP_KEY": "sk-upstream"})
    async with proxy_stack(make) as stack:
        client = openai.AsyncOpenAI(base_url=stack.proxy_url + "/v1", api_key="sk-client")
        await client.embeddings.create(model="m", input="x")
        await client.close()
        assert stack.fakes[0].requests[0].headers["Authorization"] == "Bearer sk-upstream"


# -- routing ---------------------------------------------------------------------------------------


def two_upstreams(urls: list[str]) -> Config:
    return build_config(
        {
            "upstreams": [
                {"name": "left", "base_url": urls[0], "models": ["a"]},
                {"name": "right", "base_url": urls[1], "models": ["b"]},
            ],
            "default_upstream": "right",
        },
        {},
    )


async def test_routing_by_model_and_merged_model_list() -> None:
    fakes = [FakeUpstream(name="left", models=("a",)), FakeUpstream(name="right", models=("b",))]
    async with proxy_stack(two_upstreams, fakes) as stack:
        client = openai.AsyncOpenAI(base_url=stack.proxy_url + "/v1", api_key="sk")
        for model in ("a", "b", "unknown"):
            await client.chat.completions.create(model=model, messages=MESSAGES)
        assert [orjson.loads(r.body)["model"] for r in fakes[0].requests] == ["a"]
        assert [orjson.loads(r.body)["model"] for r in fakes[1].requests] == ["b", "unknown"]
        assert sorted(m.id for m in (await client.models.list()).data) == ["a", "b"]
        await client.close()
        labels = {"route": "chat", "model_name": "other", "upstream": "right", "status": "200"}
        assert sample(stack.app, "tbg_requests_total", **labels) == 1


# -- observability ---------------------------------------------------------------------------------


async def test_metrics_health_and_readiness() -> None:
    async with proxy_stack(single()) as stack, httpx.AsyncClient() as http:
        await http.post(stack.proxy_url + "/v1/embeddings", json={"model": "m"})
        text = (await http.get(stack.proxy_url + "/metrics")).text
        for name in (
            "tbg_requests_total",
            "tbg_request_duration_seconds_bucket",
            "tbg_time_to_first_byte_seconds_bucket",
            "tbg_upstream_errors_total",
            "tbg_in_flight_requests",
            "tbg_proxy_added_seconds_bucket",
        ):
            assert name in text
        assert 'tbg_in_flight_requests{upstream="up"} 0.0' in text
        assert (await http.get(stack.proxy_url + "/readyz")).json() == {"status": "ready"}
        assert (await http.get(stack.proxy_url + "/healthz")).status_code == 200


async def _until(predicate: Callable[[], bool]) -> None:
    """Poll a condition the proxy reaches after the client already saw the end (5 s at most)."""
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in 5 s")


async def test_a_bug_in_request_accounting_is_counted_and_the_answer_still_goes_out(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(self: Forwarder, request: web.Request, st: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(Forwarder, "_observe", broken)
    async with proxy_stack(single()) as stack, httpx.AsyncClient() as http:
        r = await http.post(
            stack.proxy_url + "/v1/chat/completions", json={"model": "m", "messages": MESSAGES}
        )
        assert r.status_code == 200 and r.content == CHAT_BODY
        await _until(lambda: sample(stack.app, "tbg_internal_errors_total", where="v1") == 1)
    assert any(rec.exc_info and rec.getMessage() == "internal error" for rec in caplog.records)
