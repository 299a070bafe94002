"""Decisions end to end with the real reference LLM behind the real proxy and the real openai SDK:
tool calls forced by a named `tool_choice` (whole and streamed) and `response_format` json answers
are sampled, replayed, compared and tallied. The reference writes its greedy text as the arguments
(reference/tools.py), so arguments that do not parse are counted as unparseable. Serial mode is
deterministic (no decision changes); the thermostat samples at T = 0.3, so arguments and JSON
content change while the forced tool never does."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest
from openai import AsyncOpenAI, BadRequestError

from reference.launch import ReferenceProcess
from tests.shadow import test_e2e_reference as e2e
from tests.shadow.test_e2e_reference import Proxy

# the module-scoped upstreams and the proxy factory of the end-to-end tests
serial_ref = e2e.serial_ref
thermostat_ref = e2e.thermostat_ref
proxy_factory = e2e.proxy_factory

pytestmark = [pytest.mark.reference, pytest.mark.slow]

TOOLS: Any = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]  # fmt: skip
FORCED: Any = {"type": "function", "function": {"name": "get_weather"}}
PROMPTS = [
    'Answer with JSON only, like {"city": "Paris", "days": 3}: the weather in Rome for 2 days.',
    "Call the weather tool for Oslo, five days.",
    'Return a JSON object {"answer": ...}: what is two plus two?',
    "Which city is the capital of France? Answer in JSON.",
]


def _parses(text: str) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


async def _tool(oai: AsyncOpenAI, prompt: str, stream: bool) -> str:
    """The arguments the client received (whole or assembled from the stream)."""
    messages: Any = [{"role": "user", "content": prompt}]
    if not stream:
        out = await oai.chat.completions.create(model="smollm2", messages=messages, temperature=0,
                                                max_tokens=12, tools=TOOLS, tool_choice=FORCED)  # fmt: skip
        (call,) = out.choices[0].message.tool_calls or []
        assert call.function.name == "get_weather" and out.choices[0].message.content is None  # type: ignore[union-attr]
        return call.function.arguments  # type: ignore[union-attr]
    parts, names = [], []
    events = await oai.chat.completions.create(model="smollm2", messages=messages, temperature=0,
                                               max_tokens=12, tools=TOOLS, tool_choice=FORCED,
                                               stream=True)  # fmt: skip
    async for chunk in events:
        for delta_call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            if delta_call.function and delta_call.function.name:
                names.append(delta_call.function.name)
            if delta_call.function and delta_call.function.arguments:
                parts.append(delta_call.function.arguments)
    assert names == ["get_weather"]
    return "".join(parts)


async def _json(oai: AsyncOpenAI, prompt: str) -> str:
    out = await oai.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": prompt}], temperature=0,
        max_tokens=12, response_format={"type": "json_object"},
    )  # fmt: skip
    return out.choices[0].message.content or ""


async def test_the_reference_honours_a_forced_tool_and_refuses_what_it_cannot_do(
    serial_ref: ReferenceProcess,
) -> None:
    async with AsyncOpenAI(base_url=serial_ref.base_url, api_key="x", max_retries=0) as oai:
        whole = await _tool(oai, PROMPTS[1], stream=False)
        assert await _tool(oai, PROMPTS[1], stream=True) == whole  # the same greedy text
        msgs: Any = [{"role": "user", "content": "hi"}]
        with pytest.raises(BadRequestError, match="tool_choice"):
            await oai.chat.completions.create(model="smollm2", messages=msgs, tools=TOOLS,
                                              tool_choice="required", max_tokens=2)  # fmt: skip
        with pytest.raises(BadRequestError, match="not among the tools"):
            await oai.chat.completions.create(
                model="smollm2", messages=msgs, tools=TOOLS[1:], tool_choice=FORCED, max_tokens=2
            )
        auto = await oai.chat.completions.create(model="smollm2", messages=msgs, tools=TOOLS,
                                                 max_tokens=4, temperature=0)  # fmt: skip
        assert auto.choices[0].message.content and not auto.choices[0].message.tool_calls


async def _drive(proxy: Proxy) -> tuple[list[str], list[str]]:
    oai = proxy.client()
    args = await asyncio.gather(*(_tool(oai, p, stream=i % 2 == 1) for i, p in enumerate(PROMPTS)))
    contents = await asyncio.gather(*(_json(oai, p) for p in PROMPTS))
    return list(args), list(contents)


def _decisions(report: dict[str, Any]) -> dict[str, Any]:
    (est,) = report["estimates"]
    d = est["decisions"]
    assert isinstance(d, dict)
    return d


async def test_serial_reference_never_changes_a_decision(
    serial_ref: ReferenceProcess, proxy_factory: Any
) -> None:
    proxy: Proxy = await proxy_factory(serial_ref.base_url, replays=2)
    args, contents = await _drive(proxy)
    report = await proxy.report()
    assert report["accounting"]["replayed"] == 8
    d = _decisions(report)
    assert (d["trials"], d["replays"]) == (8, 16)
    assert (d["tool"]["compared"], d["tool"]["changed"]) == (8, 0)
    assert (d["arguments"]["compared"], d["arguments"]["changed"]) == (8, 0)
    # a replay's arguments are compared as text when either side does not parse
    assert d["arguments"]["unparseable"] == 2 * sum(not _parses(a) for a in args)
    assert (d["field"]["compared"], d["field"]["changed"]) == (8, 0)
    assert d["field"]["unparseable"] == 2 * sum(
        not isinstance(_parses(c) and orjson.loads(c), dict) for c in contents
    )
    assert d["any"]["rate"] == 0.0 and 0 < d["any"]["upper"] < 1
    kinds = {(c["kind"], c["streaming"]) for c in d["by_class"]}
    assert kinds == {("tools", "whole"), ("tools", "stream"), ("json", "whole")}
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(proxy.url + "/metrics")).text
    assert (
        'tbg_decision_replays_total{decision="tool",model_name="smollm2",upstream="reference"} 8.0'
        in metrics
    )


async def test_thermostat_changes_arguments_and_content_but_not_the_forced_tool(
    thermostat_ref: ReferenceProcess, proxy_factory: Any
) -> None:
    proxy: Proxy = await proxy_factory(thermostat_ref.base_url, replays=2)
    await _drive(proxy)
    d = _decisions(await proxy.report())
    assert d["tool"]["changed"] == 0  # forced: the tool never changes
    assert d["arguments"]["changed"] > 0, d["arguments"]  # sampled at T = 0.3, 12 tokens
    assert d["field"]["changed"] > 0, d["field"]
    for rate in (d["arguments"], d["field"], d["any"]):
        assert 0 <= rate["lower"] <= rate["rate"] <= rate["upper"] <= 1
