"""Logprob augmentation never changes what a client gets: support is learned per (upstream, model,
streaming), an augmented request the upstream refuses is resent plain before anything reaches the
client, and the stripped answer is byte for byte the upstream's plain one, `logprobs` key or not.

One fake upstream, four models: `good` returns logprobs; `bad` answers 400 to any request asking
for them; `nostream` returns them only without streaming (400 with `stream: true`); `omit` returns
them, but its plain answers have no `logprobs` key at all. Each client request goes to the upstream
directly and through a shadow proxy (sample rate 1); the two answers must be identical bytes.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from proxy.app import make_app, make_runner
from proxy.config import build_config
from proxy.shadow.tap import ShadowTap
from proxy.shadow.wiring import SHADOW
from tests.shadow.conftest import worker_env

TOKENS = ["Hel", "lo"]


def _logprobs() -> dict[str, Any]:
    return {
        "content": [
            {"token": t, "logprob": -0.5, "bytes": list(t.encode()),
             "top_logprobs": [{"token": t, "logprob": -0.5, "bytes": list(t.encode())}]}
            for t in TOKENS
        ]
    }  # fmt: skip


class Upstream:
    def __init__(self) -> None:
        self.refused = 0  # 400s answered to requests asking for logprobs
        self.primaries_with_logprobs = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        model, stream, asks = body["model"], bool(body.get("stream")), bool(body.get("logprobs"))
        if asks and (model == "bad" or (model == "nostream" and stream)):
            self.refused += 1
            return web.Response(
                status=400,
                body=b'{"error": {"message": "logprobs not supported", "code": 400}}',
                content_type="application/json",
            )
        if asks and "max_tokens" not in body:
            self.primaries_with_logprobs += 1  # replays carry max_tokens; primaries here do not
        lp: Any = _logprobs() if asks else None
        if stream:
            return await self._stream(request, model, lp)
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": "Hello"}}
        if lp is not None or model != "omit":
            choice["logprobs"] = lp
        choice["finish_reason"] = "stop"
        payload = {"id": "c1", "object": "chat.completion", "created": 1, "model": model,
                   "choices": [choice], "usage": {"prompt_tokens": 3, "completion_tokens": 2,
                                                  "total_tokens": 5}}  # fmt: skip
        return web.Response(body=orjson.dumps(payload), content_type="application/json")

    async def _stream(self, request: web.Request, model: str, lp: Any) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i, text in enumerate(TOKENS):
            choice: dict[str, Any] = {"index": 0, "delta": {"content": text}}
            if lp is not None:
                choice["logprobs"] = {"content": [lp["content"][i]]}
            elif model != "omit":
                choice["logprobs"] = None
            choice["finish_reason"] = "stop" if i == len(TOKENS) - 1 else None
            event = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": model,
                     "choices": [choice]}  # fmt: skip
            await resp.write(b"data: " + orjson.dumps(event) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


@contextlib.asynccontextmanager
async def _stack() -> AsyncIterator[tuple[str, str, ShadowTap, Upstream]]:
    fake = Upstream()
    up_app = web.Application()
    up_app.router.add_post("/v1/chat/completions", fake.handle)
    up = web.AppRunner(up_app, access_log=None)
    await up.setup()
    await web.TCPSite(up, "127.0.0.1", 0).start()
    up_url = f"http://127.0.0.1:{up.addresses[0][1]}/v1"
    shadow = {"enabled": True, "sample_rate": 1, "replays": 1, "max_concurrent": 1,
              "replays_per_minute": 1e6, "tokens_per_minute": 1e9}  # fmt: skip
    upstreams = [{"name": "up", "base_url": up_url}]
    app = make_app(build_config({"upstreams": upstreams, "shadow": shadow}, worker_env()))
    runner = make_runner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield up_url, f"http://127.0.0.1:{runner.addresses[0][1]}/v1", app[SHADOW], fake
    finally:
        await runner.cleanup()
        await up.cleanup()


async def _same(
    http: aiohttp.ClientSession, direct: str, proxy: str, tap: ShadowTap, model: str, stream: bool
) -> None:
    body = {"model": model, "temperature": 0, "stream": stream,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    async with http.post(direct + "/chat/completions", json=body) as r:
        expected = (r.status, await r.read())
    async with http.post(proxy + "/chat/completions", json=body) as r:
        got = (r.status, await r.read())
    assert expected[0] == 200
    assert got == expected, (model, stream, got, expected)
    assert await tap.idle(10)  # replays done: what they taught is in place for the next request


async def test_support_is_learned_per_model_and_streaming_and_never_breaks_a_request() -> None:
    async with _stack() as (direct, proxy, tap, fake), aiohttp.ClientSession() as http:
        for _ in range(3):  # `good`: learned, then augmented (and stripped)
            await _same(http, direct, proxy, tap, "good", stream=False)
        assert fake.primaries_with_logprobs >= 1  # augmentation does happen where it is safe
        for _ in range(10):  # another model of the same upstream rejects logprobs
            await _same(http, direct, proxy, tap, "bad", stream=False)
        for _ in range(5):
            await _same(http, direct, proxy, tap, "bad", stream=True)
        for _ in range(3):  # non-streaming logprobs work for `nostream`
            await _same(http, direct, proxy, tap, "nostream", stream=False)
        before = fake.refused
        for _ in range(20):  # ... its streams must not be augmented into 400s
            await _same(http, direct, proxy, tap, "nostream", stream=True)
        assert fake.refused - before <= 1  # at most one refused augmented stream, resent plain
        totals = tap.view().totals()
        assert totals["sampled"] == totals["replayed"] + totals["dropped"] + totals["failed"]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_an_absent_logprobs_key_stays_absent(stream: bool) -> None:
    async with _stack() as (direct, proxy, tap, fake), aiohttp.ClientSession() as http:
        for _ in range(4):
            await _same(http, direct, proxy, tap, "omit", stream=False)
            await _same(http, direct, proxy, tap, "omit", stream=stream)
        assert fake.primaries_with_logprobs >= 1  # augmented and stripped, not just passed by
