"""Edges a client or an operator meets: no credentials of a base_url in the start line, no
upstream address in 502/504 bodies, OpenAI-style JSON (without the request's bytes) for what the
HTTP parser rejects, and a body nested too deeply to re-serialise is simply not sampled."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import orjson
import pytest

from proxy.app import METRICS
from proxy.config import Config, build_config
from proxy.logs import JsonFormatter
from proxy.serve import _measuring
from proxy.shadow.wiring import SHADOW
from reference.launch import free_port
from tests.proxy.fakes import FakeUpstream, proxy_stack
from tests.proxy.test_forwarding import single
from tests.shadow.conftest import worker_env


def test_the_start_line_shows_no_base_url_credentials() -> None:
    config = build_config(
        {"upstreams": [{"name": "up", "base_url": "http://alice:s3cr3t-PW@127.0.0.1:9/v1"}]}, {}
    )
    line = _measuring(config, 8080)
    assert "s3cr3t-PW" not in line and "alice" not in line
    assert "up (http://127.0.0.1:9/v1)" in line


async def test_502_and_504_bodies_name_the_upstream_not_its_address(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()  # nothing listens there

    def make(urls: list[str]) -> Config:
        entry = {"name": "up", "base_url": f"http://127.0.0.1:{port}/internal/v1"}
        slow = {"name": "slow", "base_url": urls[0], "models": ["s"],
                "timeouts": {"first_byte": 0.3}}  # fmt: skip
        return build_config({"upstreams": [entry, slow]}, {})

    async with proxy_stack(make, [FakeUpstream()]) as stack, aiohttp.ClientSession() as http:
        url = stack.proxy_url + "/v1/chat/completions"
        with caplog.at_level(logging.WARNING):
            async with http.post(url, json={"model": "m", "messages": []}) as r:
                refused = (r.status, await r.read())
            headers = {"x-fault": "sleep"}
            async with http.post(url, json={"model": "s", "messages": []}, headers=headers) as r:
                timed_out = (r.status, await r.read())
    assert refused[0] == 502 and timed_out[0] == 504
    for body in (refused[1], timed_out[1]):
        assert b"127.0.0.1" not in body and b"/internal" not in body and b"/v1" not in body
        assert orjson.loads(body)["error"]["type"] == "upstream_error"
    assert orjson.loads(refused[1])["error"]["message"] == "Upstream 'up' failed (connect)."
    assert orjson.loads(timed_out[1])["error"]["message"] == "Upstream 'slow' timed out."
    logged = [JsonFormatter().format(r) for r in caplog.records if r.msg == "upstream failure"]
    assert any(f"127.0.0.1:{port}/internal/v1" in line for line in logged)  # the operator's view


SECRET = "PROMPT-BYTES-77"
MALFORMED = [
    f"GET /v1/models HTTP/1.1\r\nHost: x\r\nBad Header {SECRET}\r\n\r\n",
    f"POST /v1/models HTTP/1.1\r\nHost: x\r\nContent-Length: {SECRET}\r\n\r\n",
    f"POST /v1/models HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{SECRET}\r\n",
    f"GET /v1/models HTTP/9.{SECRET}\r\nHost: x\r\n\r\n",
    f"G{SECRET}\x01 /v1/models HTTP/1.1\r\n\r\n",
]


@pytest.mark.parametrize("raw", MALFORMED, ids=range(len(MALFORMED)))
async def test_parser_errors_are_openai_json_without_the_request_bytes(raw: str) -> None:
    async with proxy_stack(single()) as stack:
        port = int(stack.proxy_url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw.encode())
        async with asyncio.timeout(5):
            response = await reader.read()
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1].startswith(b"4"), head  # HTTP/1.0 when the version is bad
    assert b"application/json" in head.lower()
    assert SECRET.encode() not in response
    error = orjson.loads(body)["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_http_request"


@pytest.mark.parametrize("depth", [255, 300, 1000])
async def test_a_body_nested_too_deeply_to_replay_is_not_sampled(
    depth: int, caplog: pytest.LogCaptureFixture
) -> None:
    shadow = {"enabled": True, "sample_rate": 1, "replays": 1}

    def make(urls: list[str]) -> Config:
        entry = {"name": "up", "base_url": urls[0], "models": ["m"]}
        return build_config({"upstreams": [entry], "shadow": shadow}, worker_env())

    nested = b"[" * depth + b"]" * depth
    body = b'{"model": "m", "temperature": 0, "messages": [], "extra": ' + nested + b"}"
    async with proxy_stack(make) as stack, aiohttp.ClientSession() as http:
        with caplog.at_level(logging.ERROR):
            for _ in range(3):
                async with http.post(stack.proxy_url + "/v1/chat/completions", data=body) as r:
                    assert r.status == 200, await r.read()
            ok = b'{"model": "m", "temperature": 0, "messages": []}'
            async with http.post(stack.proxy_url + "/v1/chat/completions", data=ok) as r:
                assert r.status == 200
            tap = stack.app[SHADOW]
            assert await tap.idle(10)
        internal = stack.app[METRICS].internal_errors
        counts = [
            s.value for m in internal.collect() for s in m.samples if s.name.endswith("_total")
        ]
        assert sum(counts) == 0
        assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
        assert tap.view().totals()["sampled"] == 1  # only the ordinary request
