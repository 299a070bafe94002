"""A bounded load check of the reference modes (the figures in docs/reference.md).

    python -m reference.loadcheck [--tokens 48] [--short 16] [--threads 1]

Starts a `serial` and a `batched` server (`ReferenceProcess`), then:
1. decodes 8 fixed chat prompts one at a time on `serial` (the batch-of-one baseline);
2. sends the same 8 at once to `batched` and counts completions that diverge from the baseline;
3. sends the 8 at once (`--short` tokens each) to both and reports aggregate tokens/s;
4. reports each server's start time (process start → `/v1/models` answers).
Greedy (temperature 0) throughout. Uses aiohttp only (no openai SDK needed).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

from reference.launch import ReferenceProcess

PROMPTS = (
    "Write a haiku about the sea.",
    "What is 17*23?",
    "List three fruits.",
    "Explain gravity briefly.",
    "Who wrote Hamlet?",
    "Give me a name for a cat.",
    "Describe Paris in one sentence.",
    "What is Python?",
)


@dataclass(frozen=True)
class Completion:
    tokens: tuple[str, ...]
    logprobs: tuple[float, ...]


async def _chat(
    session: aiohttp.ClientSession, base_url: str, prompt: str, max_tokens: int
) -> Completion:
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "logprobs": True,
    }
    async with session.post(f"{base_url}/chat/completions", json=body) as resp:
        resp.raise_for_status()
        data = await resp.json()
    content = data["choices"][0]["logprobs"]["content"]
    return Completion(
        tuple(c["token"] for c in content), tuple(float(c["logprob"]) for c in content)
    )


async def _alone(base_url: str, prompts: Sequence[str], n: int) -> list[Completion]:
    async with aiohttp.ClientSession() as session:
        return [await _chat(session, base_url, p, n) for p in prompts]


async def _together(
    base_url: str, prompts: Sequence[str], n: int
) -> tuple[list[Completion], float]:
    async with aiohttp.ClientSession() as session:
        t0 = time.monotonic()
        out = await asyncio.gather(*(_chat(session, base_url, p, n) for p in prompts))
        return list(out), time.monotonic() - t0


def _first_divergence(a: Completion, b: Completion) -> int | None:
    for i, (x, y) in enumerate(zip(a.tokens, b.tokens, strict=False)):
        if x != y:
            return i
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reference.loadcheck")
    parser.add_argument("--tokens", type=int, default=48, help="tokens for the divergence check")
    parser.add_argument("--short", type=int, default=16, help="tokens for the throughput check")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per server")
    args = parser.parse_args(argv)
    threads = ("--threads", str(args.threads))
    with ReferenceProcess(mode="serial", extra_args=threads) as serial:
        print(f"serial: started in {serial.start_seconds:.1f}s", flush=True)
        base = asyncio.run(_alone(serial.base_url, PROMPTS, args.tokens))
        s_runs, s_time = asyncio.run(_together(serial.base_url, PROMPTS, args.short))
    with ReferenceProcess(mode="batched", extra_args=(*threads, "--gather-ms", "50")) as batched:
        print(f"batched: started in {batched.start_seconds:.1f}s", flush=True)
        b_long, _ = asyncio.run(_together(batched.base_url, PROMPTS, args.tokens))
        b_runs, b_time = asyncio.run(_together(batched.base_url, PROMPTS, args.short))
    firsts = [_first_divergence(a, b) for a, b in zip(base, b_long, strict=True)]
    diverged = [f for f in firsts if f is not None]
    print(
        f"divergence: {len(diverged)} of {len(PROMPTS)} completions ({args.tokens} tokens) differ "
        f"alone vs batched; first divergent token index {sorted(diverged)}"
    )
    s_tps = sum(len(r.tokens) for r in s_runs) / s_time
    b_tps = sum(len(r.tokens) for r in b_runs) / b_time
    print(
        f"throughput ({len(PROMPTS)} concurrent × {args.short} tokens): serial {s_tps:.1f} tok/s, "
        f"batched {b_tps:.1f} tok/s (×{b_tps / s_tps:.1f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
