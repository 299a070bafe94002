"""Client misbehaviour: oversize bodies refused early (declared or chunked), odd JSON refused
cleanly, odd model names routed to the default upstream under the `other` label."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from tests.proxy.fakes import FakeUpstream, proxy_stack
from tests.proxy.test_forwarding import sample, single

LIMIT = 4096


async def _raw(port: int, head: bytes, body_chunks: list[bytes]) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        for chunk in body_chunks:
            writer.write(chunk)
            await writer.drain()
        async with asyncio.timeout(5):
            return await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()


async def test_declared_oversize_body_is_413_before_it_is_sent() -> None:
    fake = FakeUpstream()
    async with proxy_stack(single(max_body_bytes=LIMIT), [fake]) as stack:
        port = int(stack.proxy_url.rsplit(":", 1)[1])
        head = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (100 * 1024 * 1024)
        )
        response = await _raw(port, head, [])  # not one body byte sent
        assert response.startswith(b"HTTP/1.1 413")
        assert fake.requests == []


async def test_chunked_oversize_body_is_413_without_reading_it_whole() -> None:
    fake = FakeUpstream()
    async with proxy_stack(single(max_body_bytes=LIMIT), [fake]) as stack:
        port = int(stack.proxy_url.rsplit(":", 1)[1])
        head = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"%x\r\n%s\r\n" % (1024, b"a" * 1024)
        response = await _raw(port, head, [chunk] * 8)  # 8 KiB of an endless body, no final chunk
        assert response.startswith(b"HTTP/1.1 413")
        assert fake.requests == []


@pytest.mark.parametrize("body", [b"[]", b'"text"', b"42", b"null", b"{", b"\xff\xfe"])
async def test_bodies_that_are_not_requests_are_400_and_never_forwarded(body: bytes) -> None:
    fake = FakeUpstream()
    async with proxy_stack(single(), [fake]) as stack, httpx.AsyncClient() as http:
        r = await http.post(stack.proxy_url + "/v1/chat/completions", content=body)
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        assert fake.requests == []


@pytest.mark.parametrize("model", ["m" * 100_000, "\u202e\u0000\ud7ff\U0010ffff", "é☃😀", " m "])
async def test_odd_model_names_go_to_the_default_upstream_as_other(model: str) -> None:
    async with proxy_stack(single()) as stack:
        client = openai.AsyncOpenAI(base_url=stack.proxy_url + "/v1", api_key="k", max_retries=0)
        await client.chat.completions.create(model=model, messages=[])
        await client.close()
        labels = {"route": "chat", "model_name": "other", "upstream": "up", "status": "200"}
        assert sample(stack.app, "tbg_requests_total", **labels) == 1


@pytest.mark.parametrize("body", [b'{"model": 5}', b'{"model": ["m"]}', b'{"model": null}'])
async def test_a_non_string_model_goes_to_the_default_upstream_as_other(body: bytes) -> None:
    """Decision: the proxy does not validate the OpenAI schema (the upstream does); a model that
    is not a string routes to the default upstream, unchanged, under the bounded `other` label."""
    fake = FakeUpstream()
    async with proxy_stack(single(), [fake]) as stack, httpx.AsyncClient() as http:
        r = await http.post(stack.proxy_url + "/v1/chat/completions", content=body)
        assert r.status_code == 200 and [q.body for q in fake.requests] == [body]
        labels = {"route": "chat", "model_name": "other", "upstream": "up", "status": "200"}
        assert sample(stack.app, "tbg_requests_total", **labels) == 1
