"""Reasoning models on /v1/responses, with a fault-injecting upstream: one that refuses logprobs
there (as vLLM does for gpt-oss models) and one that serves them. Either way the trials are
compared by text (model-free statistics), every primary reaches the client as the upstream sent
it, and finding out costs one replay attempt, never a primary."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

from proxy.app import make_app, make_runner
from proxy.config import build_config
from proxy.shadow.capability import logprobs_key
from proxy.shadow.tap import ShadowTap
from proxy.shadow.wiring import SHADOW
from proxy.tap import RequestInfo
from tests.shadow.conftest import serve

INCLUDE = "message.output_text.logprobs"
REASONING = "The user greets me. I greet back."
ANSWER = "Hello there!"


class ReasoningUpstream:
    """A deterministic reasoning model: a reasoning item, then the message."""

    def __init__(self, refuse_logprobs: bool) -> None:
        self.refuse = refuse_logprobs
        self.requests: list[dict[str, Any]] = []

    def body(self, logprobs: bool) -> dict[str, Any]:
        lp = None
        if logprobs:
            lp = [{"token": t, "bytes": list(t.encode()), "logprob": -0.1,
                   "top_logprobs": [{"token": t, "bytes": list(t.encode()), "logprob": -0.1}]}
                  for t in ("Hello", " there", "!")]  # fmt: skip
        return {
            "id": "resp_1", "object": "response", "created_at": 1, "model": "m",
            "status": "completed", "incomplete_details": None, "top_logprobs": None,
            "output": [
                {"id": "rs_1", "type": "reasoning", "summary": [],
                 "content": [{"type": "reasoning_text", "text": REASONING}]},
                {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
                 "content": [{"type": "output_text", "text": ANSWER, "annotations": [],
                              "logprobs": lp}]},
            ],
            "usage": {"input_tokens": 5, "output_tokens": 12, "total_tokens": 17},
        }  # fmt: skip

    def app(self) -> web.Application:
        async def handle(request: web.Request) -> web.StreamResponse:
            body = orjson.loads(await request.read())
            self.requests.append(body)
            logprobs = INCLUDE in (body.get("include") or [])
            if logprobs and self.refuse:
                error = {"message": "logprobs are not supported with gpt-oss models",
                         "type": "invalid_request_error", "param": "logprobs", "code": 400}  # fmt: skip
                return web.json_response({"error": error}, status=400)
            answer = self.body(logprobs)
            if not body.get("stream"):
                return web.Response(body=orjson.dumps(answer), content_type="application/json")
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            events = [
                {"type": "response.created", "response": {**answer, "output": [],
                                                          "status": "in_progress"}},
                {"type": "response.output_text.delta", "delta": ANSWER,
                 "logprobs": answer["output"][1]["content"][0]["logprobs"] or []},
                {"type": "response.completed", "response": answer},
            ]  # fmt: skip
            for n, event in enumerate(events):
                data = orjson.dumps({**event, "sequence_number": n})
                await resp.write(b"event: " + event["type"].encode() + b"\ndata: " + data + b"\n\n")
            await resp.write_eof()
            return resp

        app = web.Application()
        app.router.add_post("/v1/responses", handle)
        return app


@pytest.fixture
async def runners() -> AsyncIterator[list[web.AppRunner]]:
    made: list[web.AppRunner] = []
    yield made
    for runner in reversed(made):
        await runner.cleanup()


@pytest.mark.parametrize("refuse", [True, False])
async def test_reasoning_runs_are_compared_by_text(
    runners: list[web.AppRunner], refuse: bool
) -> None:
    fake = ReasoningUpstream(refuse)
    base, runner = await serve(fake.app())
    runners.append(runner)
    config = build_config(
        {"upstreams": [{"name": "fake", "base_url": f"{base}/v1", "models": ["m"]}],
         "shadow": {"enabled": True, "sample_rate": 1.0, "replays": 2,
                    "replays_per_minute": 1e6, "tokens_per_minute": 1e9}},
        {},
    )  # fmt: skip
    app = make_app(config)
    proxy, prunner = await serve(app, make_runner(app))
    runners.append(prunner)
    tap: ShadowTap = app[SHADOW]
    body = {"model": "m", "input": "Hi", "temperature": 0}
    async with httpx.AsyncClient(timeout=30) as http:
        for stream in (False, False, True, True):
            sent = {**body, "stream": stream}
            got = await http.post(f"{proxy}/v1/responses", json=sent)
            direct = await http.post(f"{base}/v1/responses", json=sent)
            assert got.status_code == 200 and got.content == direct.content
            assert await tap.idle(30)
        report = (await http.get(f"{proxy}/tbg")).json()
    assert report["accounting"]["sampled"] == 4 == report["accounting"]["replayed"]
    est = report["estimates"][0]
    assert est["pairs"] == 4 * 3 and est["diverged"] == 0
    assert est["method"] not in ("likelihood", "jitter")  # text only: no logprobs compared
    primaries = [r for r in fake.requests if "store" not in r]
    asked = [r for r in fake.requests if INCLUDE in (r.get("include") or [])]
    # One replay asked for logprobs: refused, or answered with reasoning text, which leaves no
    # logprobs to compare. Either way replays ask without from then on, and no primary was
    # ever augmented.
    assert len(asked) == 1 and asked[0].get("store") is False
    assert len(primaries) == 8 and all("include" not in p for p in primaries)  # and 4 direct


def test_responses_learn_logprobs_apart_from_chat() -> None:
    def info(route: str) -> RequestInfo:
        return RequestInfo(route, "up", "m", {"model": "m"}, b"{}", {}, False)

    assert logprobs_key(info("chat")) == logprobs_key(info("completions")) == ("up", "m")
    assert logprobs_key(info("responses")) != ("up", "m")
