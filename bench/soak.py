"""Soak: steady bounded load through the proxy with shadow sampling on; RSS, fds and tasks flat.

`python -m bench.soak --minutes 30 [--concurrency 4] [--rate 40]`

Everything runs in this process on 127.0.0.1 (the fake upstream from bench/fake_upstream.py, the
proxy built by load_config + make_app from the quick-start flags `--model m --sample-rate 0.5
--replays 2`, and an aiohttp load generator), so the figures include all three. Every
`--every` seconds it samples RSS (VmRSS), open fds and asyncio tasks; at the end it stops the
proxy (shutdown included) and checks the shadow accounting sampled == replayed + dropped + failed.
Prints one JSON object: samples, the first-vs-last-quarter drift of each series, accounting.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import time
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from bench.fake_upstream import make_app as fake_app
from proxy.app import make_app, make_runner
from proxy.config import Overrides, load_config
from proxy.shadow.wiring import SHADOW


def _rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _serve(app: web.Application, runner: web.AppRunner | None = None) -> web.AppRunner:
    runner = runner or web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner


async def soak(minutes: float, concurrency: int, rate: float, every: float) -> dict[str, Any]:
    fake = await _serve(fake_app(16, 0.005))
    upstream = f"http://127.0.0.1:{fake.addresses[0][1]}/v1"
    config = load_config(
        Overrides(upstreams=(upstream,), models=("m",), sample_rate=0.5, replays=2, port=0),
        {},
    )
    app = make_app(config)
    proxy = await _serve(app, make_runner(app))
    url = f"http://127.0.0.1:{proxy.addresses[0][1]}/v1/chat/completions"
    body = orjson.dumps(
        {"model": "m", "temperature": 0, "max_tokens": 16, "stream": True,
         "messages": [{"role": "user", "content": "soak"}]}
    )  # fmt: skip
    deadline = time.monotonic() + minutes * 60
    done = {"ok": 0, "error": 0}
    interval = concurrency / rate

    async def lane(http: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                async with http.post(url, data=body) as r:
                    await r.read()
                    done["ok" if r.status == 200 else "error"] += 1
            except aiohttp.ClientError:
                done["error"] += 1
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    samples: list[dict[str, float]] = []

    async def sampler() -> None:
        t0 = time.monotonic()
        while time.monotonic() < deadline:
            gc.collect()
            samples.append(
                {"t": round(time.monotonic() - t0, 1), "rss_kib": _rss_kib(), "fds": _fds(),
                 "tasks": len(asyncio.all_tasks()), "requests": done["ok"] + done["error"]}
            )  # fmt: skip
            await asyncio.sleep(every)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:
        await asyncio.gather(sampler(), *(lane(http) for _ in range(concurrency)))
    tap = app[SHADOW]
    await tap.idle(30.0)
    await proxy.cleanup()  # stops the tap: still-queued jobs are dropped as "shutdown"
    await fake.cleanup()
    totals = tap.view().totals()
    quarter = max(1, len(samples) // 4)

    def drift(key: str) -> float:
        first = sum(s[key] for s in samples[1 : quarter + 1]) / quarter  # skip the cold sample
        last = sum(s[key] for s in samples[-quarter:]) / quarter
        return round(last - first, 1)

    return {
        "minutes": minutes,
        "concurrency": concurrency,
        "rate_per_s": rate,
        "requests": done,
        "drift_first_to_last_quarter": {k: drift(k) for k in ("rss_kib", "fds", "tasks")},
        "accounting": totals,
        "accounting_holds": totals["sampled"]
        == totals["replayed"] + totals["dropped"] + totals["failed"],
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second, all lanes")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    opts = parser.parse_args()
    result = asyncio.run(soak(opts.minutes, opts.concurrency, opts.rate, opts.every))
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
