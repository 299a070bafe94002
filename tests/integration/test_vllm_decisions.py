"""Decisions in front of the real vLLM CPU engine: tool calls forced by a named `tool_choice`
(guided decoding; vLLM accepts one only with a tool parser configured, which the session
fixture sets) and `response_format: json_schema` answers are sampled,
replayed and compared through the proxy, and `GET /tbg` reports their decisions.

Asserted: every trial is tallied under its kind, arguments are compared where the tools agree,
and each rate lies within its interval. How often arguments or fields change depends on this machine's
batching and is reported ("integration figures"), not asserted."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from openai import AsyncOpenAI

from tests.integration.common import MODEL, PROMPTS, settled_report
from tests.integration.conftest import figure
from tests.integration.proxy_server import ProxyThread
from tests.integration.vllm_server import VllmProcess

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

TOOLS: Any = [{"type": "function", "function": {
    "name": "answer", "description": "Record the answer",
    "parameters": {"type": "object", "properties": {
        "topic": {"type": "string"}, "summary": {"type": "string"}},
        "required": ["topic", "summary"]}}}]  # fmt: skip
FORCED: Any = {"type": "function", "function": {"name": "answer"}}
SCHEMA: Any = {"type": "json_schema", "json_schema": {"name": "answer", "schema": {
    "type": "object", "properties": {"topic": {"type": "string"}, "words": {"type": "integer"}},
    "required": ["topic", "words"]}}}  # fmt: skip
MAX_TOKENS = 60


async def _send(base_url: str) -> int:
    async with AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300) as oai:

        def messages(p: str) -> Any:
            return [{"role": "user", "content": p}]

        tools = [
            oai.chat.completions.create(model=MODEL, messages=messages(p), temperature=0,
                                        max_tokens=MAX_TOKENS, tools=TOOLS, tool_choice=FORCED)
            for p in PROMPTS
        ]  # fmt: skip
        schema = [
            oai.chat.completions.create(model=MODEL, messages=messages(p), temperature=0,
                                        max_tokens=MAX_TOKENS, response_format=SCHEMA)
            for p in PROMPTS
        ]  # fmt: skip
        calls = 0
        for out in await asyncio.gather(*tools):
            got = out.choices[0].message.tool_calls or []
            # vLLM returns no call when the guided JSON it decoded does not parse (cut short)
            assert all(c.function.name == "answer" for c in got)  # type: ignore[union-attr]
            calls += len(got)
        await asyncio.gather(*schema)
        return calls


def _line(name: str, r: dict[str, Any]) -> str:
    rate = "-" if r["rate"] is None else f"{r['rate']:.3g} [{r['lower']:.3g}, {r['upper']:.3g}]"
    extra = f", {r['unparseable']} unparseable" if "unparseable" in r else ""
    return f"{name} {r['changed']}/{r['compared']} {rate}{extra}"


def test_tool_call_and_json_decisions_are_compared(vllm_server: VllmProcess) -> None:
    shadow = {"sample_rate": 1.0, "replays": 2, "max_concurrent": 2, "replays_per_minute": 1e6,
              "tokens_per_minute": 1e9}  # fmt: skip
    with ProxyThread(vllm_server.base_url, name="vllm", shadow=shadow) as proxy:
        calls = asyncio.run(_send(proxy.base_url))
        report = settled_report(proxy.url, 2 * len(PROMPTS), timeout=480)
    n = len(PROMPTS)
    assert report["accounting"]["replayed"] == 2 * n, (report["accounting"],
                                                       report["dropped_by_reason"])  # fmt: skip
    d = report["estimates"][0]["decisions"]
    assert (d["trials"], d["replays"]) == (2 * n, 4 * n), d
    assert d["tool"]["compared"] == 2 * n, d["tool"]
    # arguments are compared where a replay called the same tools as its primary (at least one)
    assert d["arguments"]["compared"] + d["tool"]["changed"] <= 2 * n
    if calls == n:
        assert d["arguments"]["compared"] + d["tool"]["changed"] == 2 * n
    assert d["field"]["compared"] == 2 * n
    kinds = {c["kind"] for c in d["by_class"]}
    assert kinds == {"tools", "json"}
    for r in (d["arguments"], d["field"], d["any"]):
        assert 0 <= r["lower"] <= r["rate"] <= r["upper"] <= 1, r
    steps = ", ".join(
        f"{c['steps']} steps {c['estimate']:.3g} [{c['lower']:.3g}, {c['upper']:.3g}]"
        for c in d["any"]["compounded"]
    )
    figure(
        f"vLLM decisions ({n} forced-tool + {n} json_schema prompts, 2 replays, {MAX_TOKENS} "
        f"tokens; {calls}/{n} primaries came back with a call): {_line('tool', d['tool'])}; {_line('arguments', d['arguments'])}; "
        f"{_line('field', d['field'])}; any-decision run divergence: {steps}"
    )
