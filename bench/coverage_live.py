"""Live interval coverage through the real proxy: a ground-truth upstream at a known T
(bench/truth_upstream.py), `make_app` with shadow replay at sample rate 1, the real openai SDK as the
client (half the requests streamed), and the estimate read from GET /tbg as a user would.

    python -m bench.coverage_live --temperature 0.05 --replays 2 --reps 40 [--requests 120]
        [--law lognormal] [--max-tokens 32] [--out rows.csv]

Prints coverage (with its binomial standard error), misses on each side, mean estimate, mean
half-width and the spread of the estimates; docs/coverage.md quotes its runs.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
from typing import Any

import httpx
from aiohttp import web
from openai import AsyncOpenAI

from bench.truth_upstream import TruthUpstream
from proxy.app import make_app, make_runner
from proxy.config import build_config
from proxy.shadow.wiring import SHADOW


async def _serve(app: web.Application, runner: web.AppRunner) -> tuple[str, web.AppRunner]:
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return f"http://127.0.0.1:{runner.addresses[0][1]}", runner


async def one(a: argparse.Namespace, rep: int) -> dict[str, Any]:
    up = TruthUpstream(a.temperature, law=a.law, seed=rep)
    up_app = up.app()
    base, up_runner = await _serve(up_app, web.AppRunner(up_app))
    shadow = {"enabled": True, "sample_rate": 1.0, "replays": a.replays,
              "replays_per_minute": 1e6, "tokens_per_minute": 1e9}  # fmt: skip
    if a.half_life is not None:
        shadow["half_life_trials"] = a.half_life
    config = build_config(
        {
            "upstreams": [{"name": "truth", "base_url": f"{base}/v1", "models": ["truth"]}],
            "shadow": shadow,
        },
        {},
    )
    app = make_app(config)
    proxy, runner = await _serve(app, make_runner(app))
    sem = asyncio.Semaphore(a.concurrency)
    try:
        async with AsyncOpenAI(base_url=f"{proxy}/v1", api_key="unused", max_retries=0) as oai:

            async def ask(i: int) -> None:
                async with sem:
                    kw: dict[str, Any] = {
                        "model": "truth",
                        "messages": [{"role": "user", "content": f"rep {rep} question {i}"}],
                        "temperature": 0,
                        "max_tokens": a.max_tokens,
                    }
                    if i % 2:
                        stream = await oai.chat.completions.create(stream=True, **kw)
                        async for _ in stream:
                            pass
                    else:
                        await oai.chat.completions.create(**kw)

            await asyncio.gather(*(ask(i) for i in range(a.requests)))
        assert await app[SHADOW].idle(60.0)
        async with httpx.AsyncClient() as http:
            report = (await http.get(f"{proxy}/tbg")).json()
    finally:
        await runner.cleanup()
        await up_runner.cleanup()
    (est,) = report["estimates"]
    return dict(est)


async def run(a: argparse.Namespace) -> list[dict[str, Any]]:
    return [await one(a, rep) for rep in range(a.seed, a.seed + a.reps)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--temperature", type=float, default=0.05)
    ap.add_argument("--replays", type=int, default=2)
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--requests", type=int, default=120)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--law", default="lognormal")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--half-life", type=float, default=None, help="shadow.half_life_trials")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    rows = asyncio.run(run(a))
    t = a.temperature
    cov = sum(r["lower"] <= t <= r["upper"] for r in rows)
    low = sum(r["lower"] > t for r in rows)
    high = sum(r["upper"] < t for r in rows)
    n = len(rows)
    p = cov / n
    ests = [r["estimate"] for r in rows]
    half = [(r["upper"] - r["lower"]) / 2 for r in rows]
    print(
        f"T={t} replays={a.replays} law={a.law} requests={a.requests}: coverage {cov}/{n} = "
        f"{100 * p:.1f} % (SE {100 * math.sqrt(p * (1 - p) / n):.1f}), lower>T {low}, upper<T {high}; "
        f"estimate mean {statistics.mean(ests):.4g} sd {statistics.pstdev(ests):.3g}; "
        f"mean half-width {statistics.mean(half):.3g}; pairs/rep {statistics.mean(r['pairs'] for r in rows):.1f}"
    )
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            f.write("estimate,lower,upper,pairs,diverged\n")
            for r in rows:
                f.write(f"{r['estimate']},{r['lower']},{r['upper']},{r['pairs']},{r['diverged']}\n")


if __name__ == "__main__":
    main()
