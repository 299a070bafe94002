"""Security: proxy keys on every /v1 spelling, no upstream key anywhere it could leak, no label
explosion from client-chosen model names or paths."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import openai
import pytest
import yarl

from proxy.logs import JsonFormatter
from tests.proxy.fakes import FakeUpstream, proxy_stack
from tests.proxy.test_forwarding import single

PROXY_KEY = "sk-proxy-key"
UPSTREAM_KEY = "sk-upstream-SECRET-7f3a"
ENV = {"PROXY_KEYS": PROXY_KEY, "UP_KEY": UPSTREAM_KEY}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/models"),
        ("HEAD", "/v1/models"),
        ("OPTIONS", "/v1/chat/completions"),
        ("POST", "//v1/chat/completions"),
        ("GET", "/v1/%2e%2e/v1/models"),
        ("GET", "/v1/../v1/models"),
        ("GET", "/%76%31/models"),
        ("GET", "/v1//models"),
    ],
)
async def test_no_request_reaches_an_upstream_without_a_proxy_key(method: str, path: str) -> None:
    fake = FakeUpstream()
    config = single(env=ENV, api_keys_env="PROXY_KEYS", upstream={"api_key_env": "UP_KEY"})
    async with proxy_stack(config, [fake]) as stack, aiohttp.ClientSession() as http:
        url = stack.proxy_url + path
        async with http.request(method, yarl_url(url), data=b'{"model": "m"}') as r:
            await r.read()
            assert r.status in (401, 404), (method, path, r.status)
        assert fake.requests == []
        headers = {"Authorization": f"Bearer {PROXY_KEY}"}
        async with http.get(stack.proxy_url + "/v1/models", headers=headers) as r:
            assert r.status == 200  # and with the key, it goes through


def yarl_url(url: str) -> yarl.URL:
    return yarl.URL(url, encoded=True)  # send the path exactly as written


async def test_upstream_key_never_in_error_bodies_metrics_or_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = single(env=ENV, upstream={"api_key_env": "UP_KEY"})
    fake = FakeUpstream()
    async with proxy_stack(config, [fake]) as stack, aiohttp.ClientSession() as http:
        with caplog.at_level(logging.DEBUG):
            client = openai.AsyncOpenAI(
                base_url=stack.proxy_url + "/v1", api_key="client", max_retries=0
            )
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "PROMPT-TEXT-91"}]
            )
            with pytest.raises(openai.APIError) as info:
                await client.chat.completions.create(
                    model="m",
                    messages=[{"role": "user", "content": "PROMPT-TEXT-91"}],
                    extra_headers={"x-fault": "reset"},
                )
            await client.close()
            async with http.get(stack.proxy_url + "/metrics") as r:
                metrics = await r.text()
        assert fake.requests[0].headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"  # injected
        assert UPSTREAM_KEY not in str(info.value.body) and UPSTREAM_KEY not in metrics
        lines = [JsonFormatter().format(r) for r in caplog.records]
        assert lines  # something was logged (the upstream failure)
        for line in lines:
            assert UPSTREAM_KEY not in line and "PROMPT-TEXT-91" not in line


async def test_ten_thousand_model_names_and_paths_make_no_new_series() -> None:
    async with proxy_stack(single()) as stack, aiohttp.ClientSession() as http:
        url = stack.proxy_url + "/v1/chat/completions"
        sem = asyncio.Semaphore(32)

        async def one(i: int) -> None:
            async with sem:
                body = b'{"model": "model-%d-\\u00e9\\ud83d\\ude00", "messages": []}' % i
                async with http.post(url, data=body) as r:
                    await r.read()
                    assert r.status == 200
                async with http.get(stack.proxy_url + f"/v1/odd/path/{i}") as r:
                    await r.read()

        await asyncio.gather(*(one(i) for i in range(N_NAMES)))
        async with http.get(stack.proxy_url + "/metrics") as r:
            metrics = await r.text()
    series = [line for line in metrics.splitlines() if line and not line.startswith("#")]
    assert not any("model-1" in line or "odd/path" in line for line in series)
    labelled = {
        line.split("model_name=")[1].split(",")[0] for line in series if "model_name=" in line
    }
    assert labelled <= {'"m"', '"other"', '"m"}', '"other"}'}, labelled


N_NAMES = 10_000
