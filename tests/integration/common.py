"""Prompts and comparison helpers shared by the integration tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import httpx
from openai import AsyncOpenAI, OpenAI

MODEL = "smollm2"

# Eight everyday prompts; in bf16 several of them change their greedy continuation under batching.
PROMPTS: tuple[str, ...] = (
    "Write a short story about a robot who learns to paint.",
    "Explain how photosynthesis works to a ten-year-old.",
    "List five tips for staying productive when working from home.",
    "Describe the city of Paris in a few sentences.",
    "What are the main causes of climate change?",
    "Write a poem about the ocean at night.",
    "How does a computer store numbers in memory?",
    "Give me a recipe for a simple vegetable soup.",
)

# Open-ended text for /v1/completions (no chat template: a plain continuation).
COMPLETION_PROMPTS: tuple[str, ...] = (
    "Once upon a time, in a small village by the sea, there lived",
    "The three most important things to know about healthy sleep are",
    "Here is a simple explanation of how a bicycle works:",
)

# Fields that legitimately differ between two calls with identical output.
VOLATILE = ("id", "created")


def strip_volatile(response: Any) -> dict[str, Any]:
    """The response as a dict without the per-call fields (id, created)."""
    data: dict[str, Any] = response.model_dump()
    for key in VOLATILE:
        data.pop(key, None)
    return data


def chat_tokens(response: Any) -> list[str]:
    content = response.choices[0].logprobs.content or []
    return [item.token for item in content]


def first_divergence(a: Sequence[str], b: Sequence[str]) -> int | None:
    """Index of the first differing token, or None if one sequence is identical to the other."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def chat(client: OpenAI, prompt: str, max_tokens: int, **kw: Any) -> Any:
    return client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=max_tokens,
        logprobs=True,
        **kw,
    )


async def achat(client: AsyncOpenAI, prompt: str, max_tokens: int, **kw: Any) -> Any:
    return await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=max_tokens,
        logprobs=True,
        **kw,
    )


async def concurrently(
    base_url: str, prompts: Sequence[str], max_tokens: int, **kw: Any
) -> list[Any]:
    """All prompts at once (one request each, all in flight together)."""
    async with AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0) as client:
        return list(await asyncio.gather(*(achat(client, p, max_tokens, **kw) for p in prompts)))


def stream_chat_text(
    client: OpenAI, prompt: str, max_tokens: int, **kw: Any
) -> tuple[str, int, Any]:
    """Stream one chat completion; returns (text, number of content chunks, finish_reason)."""
    text, chunks, finish = [], 0, None
    with client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=max_tokens,
        stream=True,
        **kw,
    ) as stream:
        for chunk in stream:
            for choice in chunk.choices:
                if choice.delta.content:
                    text.append(choice.delta.content)
                    chunks += 1
                if choice.finish_reason:
                    finish = choice.finish_reason
    return "".join(text), chunks, finish


def settled_report(proxy_url: str, sampled: int, *, timeout: float) -> dict[str, Any]:
    """`GET /tbg` once `sampled` requests were sampled and every one is accounted for (replayed,
    dropped or failed) and folded into the estimate."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=proxy_url, timeout=10) as http:
        while True:
            report: dict[str, Any] = http.get("/tbg").json()
            acc = report["accounting"]
            done = acc["replayed"] + acc["dropped"] + acc["failed"]
            if acc["sampled"] >= sampled and done == acc["sampled"] and report["estimates"]:
                return report
            if time.monotonic() > deadline:
                raise AssertionError(f"shadow path not settled after {timeout} s: {acc}")
            time.sleep(0.5)
