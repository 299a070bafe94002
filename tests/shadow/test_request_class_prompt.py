"""Request classes' prompt length and decoding: fixed edges, usage first, the body's size without
it, and a bounded class set."""

from __future__ import annotations

import pickle
from itertools import product
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI

from proxy.shadow.channel import frame
from proxy.shadow.classes import (
    DECODINGS,
    KINDS,
    PROMPTS,
    ROUTES,
    STREAMING,
    RequestClass,
    classify,
    prompt_bucket,
    with_prompt_tokens,
)
from tests.shadow.conftest import FakeLLM, Stack


@pytest.mark.parametrize(
    ("tokens", "body_bytes", "bucket"),
    [
        (0, 0, "short"),
        (255, 10**6, "short"),  # usage wins over the body's size
        (256, 0, "medium"),
        (2047, 0, "medium"),
        (2048, 0, "long"),
        (None, 1023, "short"),  # 4 bytes a token without usage
        (None, 1024, "medium"),
        (None, 8191, "medium"),
        (None, 8192, "long"),
    ],
)
def test_prompt_buckets(tokens: int | None, body_bytes: int, bucket: str) -> None:
    assert prompt_bucket(tokens, body_bytes) == bucket


def test_classify_by_body_size_then_refine_by_usage() -> None:
    cls = classify("chat", {}, False, "seeded", body_bytes=5000)
    assert (cls.decoding, cls.prompt) == ("seeded", "medium")
    assert with_prompt_tokens(cls, 3000) == RequestClass("chat", "plain", "whole", "seeded", "long")
    assert with_prompt_tokens(cls, None) is cls  # no usage: the body's size stands
    assert with_prompt_tokens(None, 10) is None
    with pytest.raises(ValueError, match="sampled"):
        classify("chat", {}, False, "sampled")


def test_the_class_budget() -> None:
    classes = {
        RequestClass(r, k, s, d, p)
        for r, k, s, d, p in product(ROUTES, KINDS, STREAMING, DECODINGS, PROMPTS)
    }
    assert len(classes) == 3 * 3 * 2 * 2 * 3 == 108  # per (upstream, model_name), at most
    ordered = sorted(classes, key=RequestClass.order)
    assert ordered[0] == RequestClass("chat", "plain", "whole", "greedy", "short")
    assert ordered[-1] == RequestClass("responses", "json", "stream", "seeded", "long")
    value = RequestClass("chat", "json", "whole", "seeded", "long")
    assert pickle.loads(frame(value)[4:]) == value
    assert value.to_json() == {"route": "chat", "kind": "json", "streaming": "whole",
                               "decoding": "seeded", "prompt": "long"}  # fmt: skip


async def test_the_worker_reads_the_prompt_length_from_usage_or_the_body(make_stack: Any) -> None:
    """Through the proxy: a 6 kB prompt whose primary reports 4 prompt tokens is `short` (usage
    wins); streamed without `include_usage` (no usage at all) it is `medium` by its body's size."""
    stack: Stack = await make_stack(FakeLLM(), {"logprobs": "yes"})
    long = {"model": "m", "messages": [{"role": "user", "content": "x" * 6000}], "temperature": 0}
    async with AsyncOpenAI(base_url=stack.proxy_url, api_key="k", max_retries=0) as oai:
        await oai.chat.completions.create(**long)
        assert await stack.tap.idle(20.0)
        chunks = await oai.chat.completions.create(**long, stream=True)
        assert (
            "".join([c.choices[0].delta.content or "" async for c in chunks]) == "Hello, world A!"
        )
        assert await stack.tap.idle(20.0)
    async with httpx.AsyncClient() as http:
        report = (await http.get(stack.proxy_url.removesuffix("/v1") + "/tbg")).json()
    got = {(c["streaming"], c["prompt"], c["decoding"]) for c in report["estimates"][0]["by_class"]}
    assert got == {("whole", "short", "greedy"), ("stream", "medium", "greedy")}
