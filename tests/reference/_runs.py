"""Helpers: greedy chat runs through the openai SDK, alone or concurrently."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import openai

from reference.loadcheck import PROMPTS  # the same fixed prompt set as the load check

__all__ = ["PROMPTS"]

# One torch thread per server: the test machine's cores are shared (oversubscribed OpenMP spins).
THREADS = ("--threads", "1")

# Completions prompt whose first token is a near-tie: " a" vs " the" (Δ ≈ 0.125 nats in bf16),
# the third candidate ≈ 2 nats further down.
NEAR_TIE_PROMPT = "The coin landed on"
THERMOSTAT_T = 0.5
NOISE_SIGMA = 0.25


@dataclass(frozen=True)
class Run:
    tokens: tuple[str, ...]
    logprobs: tuple[float, ...]
    completion_tokens: int


def client(base_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300)


async def greedy_chat(api: openai.AsyncOpenAI, prompt: str, max_tokens: int) -> Run:
    resp = await api.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0,
        logprobs=True,
    )
    content = resp.choices[0].logprobs.content if resp.choices[0].logprobs else None
    assert content is not None
    assert resp.usage is not None
    return Run(
        tuple(c.token for c in content),
        tuple(c.logprob for c in content),
        resp.usage.completion_tokens,
    )


async def alone(base_url: str, prompts: Sequence[str], max_tokens: int) -> list[Run]:
    """One request at a time: every prompt is decoded in a batch of one."""
    async with client(base_url) as api:
        return [await greedy_chat(api, p, max_tokens) for p in prompts]


async def together(
    base_url: str, prompts: Sequence[str], max_tokens: int
) -> tuple[list[Run], float]:
    """All prompts at once; returns the runs and the wall time."""
    async with client(base_url) as api:
        t0 = time.monotonic()
        runs = await asyncio.gather(*(greedy_chat(api, p, max_tokens) for p in prompts))
        return list(runs), time.monotonic() - t0


def diverged(a: Run, b: Run) -> bool:
    """True when the shared-length token sequences differ."""
    n = min(len(a.tokens), len(b.tokens))
    return a.tokens[:n] != b.tokens[:n]
