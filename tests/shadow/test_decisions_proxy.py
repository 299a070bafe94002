"""Decisions through the real proxy, with the real openai SDK as client: a fake upstream answers tool
calls and JSON with flips planted per prompt (heterogeneous propensities, seeded), and the proxy's
`GET /tbg`, `tbg status` text and `/metrics` report exactly the planted counts, with intervals that
cover the planted world's rate. The fake is for control only; the reference LLM covers the same path
in test_decisions_reference.py."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web
from openai import AsyncOpenAI

from proxy.app import make_app, make_runner
from proxy.config import build_config
from proxy.shadow.tap import ShadowTap
from proxy.shadow.wiring import SHADOW
from proxy.status import render_text
from tests.shadow.conftest import serve, worker_env

TOOLS = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
         for n in ("get_weather", "get_time")]  # fmt: skip
FORMAT = {"type": "json_object"}
FLIPS = ("tool", "arguments", "unparseable", "field")


@dataclass
class DecisionLLM:
    """Answers prompt `p<i>`: tool requests with a call to get_weather(city, days), JSON requests
    with {"label", "score"}. A replay (a request with max_tokens) of prompt i flips with the
    prompt's own propensity `q[i]`: another tool, other arguments (or unparseable ones), or
    another label; the primary never flips, so the truth per replay is q[i]."""

    q: dict[str, float]
    flip_of: dict[str, str]  # prompt -> what its flips change
    seed: int = 5
    planted: dict[str, list[bool]] = field(default_factory=dict)  # prompt -> replays flipped
    _rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self._rng.seed(self.seed)

    def message(self, prompt: str, tools: bool, flip: bool) -> dict[str, Any]:
        how = self.flip_of[prompt] if flip else ""
        if not tools:
            label = "ham" if how == "field" else "spam"
            return {"role": "assistant", "content": orjson.dumps({"label": label, "score": 0.5,
                                                                  "prompt": prompt}).decode()}  # fmt: skip
        name = "get_time" if how == "tool" else "get_weather"
        days = 4 if how == "arguments" else 3
        args = f'{{"city": "Paris", "days": {days}}}'
        if how == "unparseable":
            args = '{"city": "Paris", "days"'
        call = {"id": "c1", "type": "function", "function": {"name": name, "arguments": args}}
        return {"role": "assistant", "content": None, "tool_calls": [call]}

    def app(self) -> web.Application:
        async def handle(request: web.Request) -> web.StreamResponse:
            body = orjson.loads(await request.read())
            prompt = body["messages"][0]["content"]
            flip = False
            if body.get("max_tokens") is not None:  # a replay
                flip = self._rng.random() < self.q[prompt]
                self.planted.setdefault(prompt, []).append(flip)
            message = self.message(prompt, "tools" in body, flip)
            finish = "tool_calls" if message.get("tool_calls") else "stop"
            usage = {"prompt_tokens": 4, "completion_tokens": 12, "total_tokens": 16}
            if not body.get("stream"):
                choice = {"index": 0, "message": message, "logprobs": None,
                          "finish_reason": finish}  # fmt: skip
                return web.json_response({"id": "x", "object": "chat.completion", "created": 1,
                                          "model": body["model"], "choices": [choice],
                                          "usage": usage})  # fmt: skip
            out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await out.prepare(request)
            deltas: list[dict[str, Any]] = [{"role": "assistant", "content": message["content"]}]
            for call in message.get("tool_calls") or ():
                args = call["function"]["arguments"]
                deltas = [{"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                                           "function": {"name": call["function"]["name"],
                                                        "arguments": ""}}]}]  # fmt: skip
                deltas += [{"tool_calls": [{"index": 0, "function": {"arguments": args[i:i + 5]}}]}
                           for i in range(0, len(args), 5)]  # fmt: skip
            for i, delta in enumerate(deltas):
                chunk = {"id": "x", "object": "chat.completion.chunk", "created": 1,
                         "model": body["model"], "choices": [{
                             "index": 0, "delta": delta, "logprobs": None,
                             "finish_reason": finish if i == len(deltas) - 1 else None}]}  # fmt: skip
                await out.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
            await out.write(b"data: [DONE]\n\n")
            await out.write_eof()
            return out

        app = web.Application()
        app.router.add_post("/v1/chat/completions", handle)
        return app


@dataclass
class Stack:
    fake: DecisionLLM
    proxy_url: str
    tap: ShadowTap


@pytest.fixture
async def decision_stack() -> AsyncIterator[Callable[..., Any]]:
    runners: list[web.AppRunner] = []

    async def factory(fake: DecisionLLM, replays: int = 3) -> Stack:
        base, runner = await serve(fake.app())
        runners.append(runner)
        shadow = {"enabled": True, "sample_rate": 1.0, "replays": replays,
                  "replays_per_minute": 1e6, "tokens_per_minute": 1e9, "logprobs": "no",
                  "decision_steps": [1, 10, 100]}  # fmt: skip
        up = {"name": "fake", "base_url": f"{base}/v1", "models": ["m"]}
        config = build_config({"upstreams": [up], "shadow": shadow}, {**worker_env()})
        app = make_app(config)
        proxy, prunner = await serve(app, make_runner(app))
        runners.append(prunner)
        return Stack(fake, f"{proxy}/v1", app[SHADOW])

    yield factory
    for runner in reversed(runners):
        await runner.cleanup()


def _world(prompts: int, kinds: tuple[str, ...], seed: int) -> DecisionLLM:
    """Heterogeneous propensities: a third of the prompts never flip, the rest q ~ Beta(1, 3)."""
    rng = random.Random(seed)
    q = {f"p{i}": 0.0 if i % 3 == 0 else rng.betavariate(1.0, 3.0) for i in range(prompts)}
    flip_of = {f"p{i}": kinds[i % len(kinds)] for i in range(prompts)}
    return DecisionLLM(q, flip_of, seed)


async def _tbg(stack: Stack) -> tuple[dict[str, Any], str]:
    assert await stack.tap.idle(30.0)
    async with httpx.AsyncClient() as http:
        base = stack.proxy_url.removesuffix("/v1")
        report = (await http.get(base + "/tbg")).json()
        metrics = (await http.get(base + "/metrics")).text
    return report, metrics


def _counter(metrics: str, name: str, decision: str) -> float:
    pattern = rf'^{name}_total{{decision="{decision}",model_name="m",upstream="fake"}} (\S+)$'
    match = re.search(pattern, metrics, re.M)
    assert match is not None, (name, decision)
    return float(match.group(1))


async def test_tool_decisions_are_counted_as_planted(decision_stack: Any) -> None:
    fake = _world(36, ("tool", "arguments", "unparseable"), seed=1)
    stack: Stack = await decision_stack(fake)
    async with AsyncOpenAI(base_url=stack.proxy_url, api_key="k", max_retries=0) as oai:

        async def ask(i: int) -> None:
            out = await oai.chat.completions.create(
                model="m", messages=[{"role": "user", "content": f"p{i}"}], temperature=0,
                tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}},
                stream=i % 2 == 1,
            )  # fmt: skip
            if i % 2 == 1:
                async for _ in out:  # type: ignore[union-attr]
                    pass
            else:
                assert out.choices[0].message.tool_calls[0].function.name == "get_weather"  # type: ignore[union-attr,index]

        await asyncio.gather(*(ask(i) for i in range(36)))
        report, metrics = await _tbg(stack)
    assert report["accounting"]["replayed"] == 36
    planted = {how: 0 for how in FLIPS}
    replays = 0
    for prompt, flips in fake.planted.items():
        planted[fake.flip_of[prompt]] += sum(flips)
        replays += len(flips)
    (est,) = report["estimates"]
    d = est["decisions"]
    assert replays == 108 and (d["trials"], d["replays"]) == (36, 108)
    assert (d["tool"]["compared"], d["tool"]["changed"]) == (108, planted["tool"])
    assert d["arguments"]["compared"] == 108 - planted["tool"]
    assert d["arguments"]["changed"] == planted["arguments"] + planted["unparseable"]
    assert d["arguments"]["unparseable"] == planted["unparseable"]
    assert d["field"]["compared"] == 0 and d["field"]["rate"] is None
    flipped = sum(planted.values())
    assert (d["any"]["changed"], d["any"]["compared"], d["any"]["trials"]) == (flipped, 108, 36)
    # The planted world's rate per replay (the primary never flips): E[q] over prompts.
    truth = sum(fake.q.values()) / len(fake.q)
    assert d["any"]["lower"] <= truth <= d["any"]["upper"], (d["any"], truth)
    one, ten, hundred = d["any"]["compounded"]
    assert one["steps"] == 1 and one["estimate"] == pytest.approx(d["any"]["rate"])
    assert ten["estimate"] == pytest.approx(1 - (1 - d["any"]["rate"]) ** 10)
    assert ten["lower"] <= ten["estimate"] <= ten["upper"] <= hundred["upper"]
    classes = {(c["kind"], c["streaming"]): c for c in d["by_class"]}
    assert set(classes) == {("tools", "whole"), ("tools", "stream")}
    assert sum(c["tool"]["changed"] for c in classes.values()) == planted["tool"]
    # /metrics: additive counters, 6 series for the model
    assert _counter(metrics, "tbg_decision_replays", "tool") == 108
    assert _counter(metrics, "tbg_decision_changed", "tool") == planted["tool"]
    assert _counter(metrics, "tbg_decision_replays", "arguments") == d["arguments"]["compared"]
    assert _counter(metrics, "tbg_decision_changed", "field") == 0
    assert sum(line.startswith("tbg_decision_") for line in metrics.splitlines()) == 6
    assert "p1" not in metrics  # nothing of a prompt in the series
    text = render_text(report)
    assert "another tool" in text and "other arguments" in text and "10-step agent run" in text


async def test_json_field_decisions_and_plain_requests(decision_stack: Any) -> None:
    fake = _world(24, ("field",), seed=2)
    stack: Stack = await decision_stack(fake, replays=2)
    async with AsyncOpenAI(base_url=stack.proxy_url, api_key="k", max_retries=0) as oai:
        await asyncio.gather(*(
            oai.chat.completions.create(model="m", messages=[{"role": "user", "content": f"p{i}"}],
                                        temperature=0, response_format=FORMAT)  # type: ignore[arg-type]
            for i in range(24)
        ))  # fmt: skip
        report, metrics = await _tbg(stack)
    planted = sum(sum(f) for f in fake.planted.values())
    d = report["estimates"][0]["decisions"]
    assert (d["trials"], d["replays"]) == (24, 48)
    assert (d["field"]["compared"], d["field"]["changed"], d["field"]["unparseable"]) == (
        48, planted, 0)  # fmt: skip
    fields = {f["name"]: f for f in d["field"]["fields"]}
    assert set(fields) == ({"label"} if planted else set())
    assert fields["label"]["changed"] == planted and fields["label"]["compared"] == 48
    assert d["tool"]["compared"] == 0
    truth = sum(fake.q.values()) / len(fake.q)
    assert d["field"]["lower"] <= truth <= d["field"]["upper"]
    assert _counter(metrics, "tbg_decision_changed", "field") == planted
