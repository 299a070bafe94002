"""Observer effect: how much shadow replay moves the primaries it measures.

Replays go to the same upstream as live traffic, so they share its batches: at a high sample rate a
primary is decoded in bigger batches than it would be without the proxy, and on a batch-variant
stack (the reference in `batched` mode, real bf16 batch effects) its greedy answer can change and its
latency grows. This runs the same bounded primary load through the proxy at several sample rates
and compares each primary with its answer served alone (no batching at all):

    OMP_NUM_THREADS=1 python -m bench.observer_effect --requests 16 --concurrency 4 \
        --rates 0,0.1,1 --replays 2 --max-tokens 24

Reported per sample rate (pooled over `--rounds` passes, rates in ABC CBA order after a warm-up):
primaries whose text differs from the solo answer, latency p50/p95, replayed requests, and the
latency ratio to the first rate. Everything on 127.0.0.1, bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from typing import Any

from openai import AsyncOpenAI

from proxy.demo import PROMPTS


async def _one(client: AsyncOpenAI, prompt: str, max_tokens: int) -> tuple[str, float]:
    t0 = time.perf_counter()
    out = await client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=max_tokens,
    )
    return out.choices[0].message.content or "", time.perf_counter() - t0


async def _load(base_url: str, prompts: list[str], concurrency: int, max_tokens: int) -> list[Any]:
    client = AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=600)
    results: list[Any] = [None] * len(prompts)
    lanes = [list(range(j, len(prompts), concurrency)) for j in range(concurrency)]

    async def lane(items: list[int]) -> None:
        for i in items:
            results[i] = await _one(client, prompts[i], max_tokens)

    try:
        await asyncio.gather(*(lane(items) for items in lanes if items))
    finally:
        await client.close()
    return results


async def _through_proxy(
    upstream: str, rate: float, replays: int, args: argparse.Namespace, prompts: list[str]
) -> dict[str, Any]:
    from aiohttp import web

    from proxy.app import make_app, make_runner
    from proxy.config import build_config
    from proxy.shadow.wiring import SHADOW

    config = build_config(
        {
            "host": "127.0.0.1",
            "port": 0,
            "upstreams": [{"name": "reference", "base_url": upstream, "models": ["smollm2"]}],
            "shadow": {
                "enabled": True,
                "sample_rate": rate,
                "replays": replays,
                "max_concurrent": args.max_concurrent,
                "delay_jitter_seconds": args.delay_jitter,
                "replays_per_minute": 100_000,
                "tokens_per_minute": 10_000_000,
            },
        },
        os.environ,
    )
    app = make_app(config)
    runner = make_runner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        t0 = time.perf_counter()
        results = await _load(
            f"http://127.0.0.1:{port}/v1", prompts, args.concurrency, args.max_tokens
        )
        wall = time.perf_counter() - t0
        await app[SHADOW].idle(args.time_limit)
        totals = app[SHADOW].view().totals()
    finally:
        await runner.cleanup()
    return {"results": results, "wall_s": wall, "replayed": totals.get("replayed", 0)}


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from reference.launch import ReferenceProcess

    prompts = [PROMPTS[i % len(PROMPTS)] + f" ({i // len(PROMPTS)})" for i in range(args.requests)]
    rates = [float(r) for r in args.rates.split(",")]
    with ReferenceProcess(mode="batched", extra_args=("--threads", str(args.threads))) as ref:
        await _load(ref.base_url, prompts[:4], 4, args.max_tokens)  # warm-up, discarded
        solo = await _load(ref.base_url, prompts, 1, args.max_tokens)  # each alone: batch of one
        # rates in ABC CBA ... order over the rounds, so drift of a shared box hits all alike
        order = [r for k in range(args.rounds) for r in (rates if k % 2 == 0 else rates[::-1])]
        runs: dict[float, list[dict[str, Any]]] = {r: [] for r in rates}
        for rate in order:
            runs[rate].append(await _through_proxy(ref.base_url, rate, args.replays, args, prompts))
    rows = []
    for rate in rates:
        got = runs[rate]
        texts = [r[0] for g in got for r in g["results"]]
        lat = [r[1] for g in got for r in g["results"]]
        rows.append(
            {
                "sample_rate": rate,
                "diverged_from_solo": sum(
                    t != s[0] for t, s in zip(texts, solo * len(got), strict=True)
                ),
                "primaries": len(texts),
                "latency_p50_s": statistics.median(lat),
                "latency_p95_s": _pct(lat, 0.95),
                "wall_s": [round(g["wall_s"], 1) for g in got],
                "replayed": sum(g["replayed"] for g in got),
            }
        )
    base = rows[0]
    for row in rows:
        row["p50_ratio_to_first"] = row["latency_p50_s"] / base["latency_p50_s"]
    return {"args": vars(args), "solo_p50_s": statistics.median(s[1] for s in solo), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--rates", default="0,0.1,1")
    ap.add_argument("--replays", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--max-concurrent", type=int, default=4, help="shadow.max_concurrent")
    ap.add_argument("--delay-jitter", type=float, default=0.0, help="shadow.delay_jitter_seconds")
    ap.add_argument("--threads", type=int, default=1, help="reference torch threads")
    ap.add_argument("--rounds", type=int, default=2, help="passes over the rates (ABC CBA order)")
    ap.add_argument("--time-limit", type=float, default=600.0, help="per rate, replays to finish")
    ap.add_argument("--out", help="write the JSON here too")
    args = ap.parse_args()
    result = asyncio.run(run(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
