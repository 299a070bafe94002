"""Does shadow sampling move the primary's latency? p50/p99 with sampling at 0 % and 10 %.

Three processes on 127.0.0.1: a fast fake upstream (bench/fake_upstream.py), and two `tbg serve`
proxies in front of it, one with shadow sampling at 0 % and one at 10 % (2 replays per sample).
The client alternates blocks of requests between the two so that machine noise hits both alike.
Bounded: `--requests` per arm, `--time-limit` for the whole run.

    python -m bench.shadow_overhead --requests 2000 --concurrency 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import numpy as np
import orjson
import yaml

from reference.launch import free_port

BODY = orjson.dumps(
    {"model": "bench", "messages": [{"role": "user", "content": "hi"}], "temperature": 0,
     "max_tokens": 16}
)  # fmt: skip


@contextlib.contextmanager
def process(args: list[str], url: str, env: dict[str, str] | None = None) -> Iterator[None]:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})})  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"{args[:3]} exited: {err[-2000:]}")
            with contextlib.suppress(OSError):
                import urllib.request

                urllib.request.urlopen(url, timeout=1).read()
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{args[:3]} not ready")
            time.sleep(0.1)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


async def block(session: aiohttp.ClientSession, url: str, n: int, concurrency: int) -> list[float]:
    latencies: list[float] = []

    async def lane(count: int) -> None:
        for _ in range(count):
            t0 = time.perf_counter()
            async with session.post(url, data=BODY,
                                    headers={"Content-Type": "application/json"}) as resp:  # fmt: skip
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"status {resp.status}")
            latencies.append(time.perf_counter() - t0)

    per = [n // concurrency + (1 if i < n % concurrency else 0) for i in range(concurrency)]
    await asyncio.gather(*(lane(c) for c in per))
    return latencies


async def measure(urls: dict[str, str], requests: int, concurrency: int, block_size: int,
                  time_limit: float) -> dict[str, list[float]]:  # fmt: skip
    results: dict[str, list[float]] = {name: [] for name in urls}
    started = time.monotonic()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        for url in urls.values():  # warm-up: connections, code paths
            await block(session, url, 50, concurrency)
        while min(len(v) for v in results.values()) < requests:
            if time.monotonic() - started > time_limit:
                break
            for name, url in urls.items():
                results[name] += await block(session, url, block_size, concurrency)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000, help="per arm")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--block", type=int, default=100)
    parser.add_argument("--rates", default="0,0.1")
    parser.add_argument("--time-limit", type=float, default=300.0)
    ns = parser.parse_args()
    rates = [float(r) for r in ns.rates.split(",")]
    upstream_port = free_port()
    upstream = f"http://127.0.0.1:{upstream_port}/v1"
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        stack.enter_context(process(
            [sys.executable, "-m", "bench.fake_upstream", "--port", str(upstream_port)],
            f"{upstream}/models"))  # fmt: skip
        urls: dict[str, str] = {}
        for rate in rates:
            port = free_port()
            config = {
                "host": "127.0.0.1", "port": port, "log_level": "WARNING",
                "upstreams": [{"name": "fake", "base_url": upstream, "models": ["bench"]}],
                "shadow": {"enabled": True, "sample_rate": rate, "replays": 2,
                           "replays_per_minute": 1e9, "tokens_per_minute": 1e12},
            }  # fmt: skip
            path = Path(tmp) / f"proxy-{rate}.yaml"
            path.write_text(yaml.safe_dump(config))
            stack.enter_context(process(["tbg", "serve", "--config", str(path)],
                                        f"http://127.0.0.1:{port}/healthz"))  # fmt: skip
            urls[f"{rate:.0%}"] = f"http://127.0.0.1:{port}/v1/chat/completions"
        urls["direct"] = f"{upstream}/chat/completions"
        results = asyncio.run(measure(urls, ns.requests, ns.concurrency, ns.block, ns.time_limit))
    print(f"concurrency {ns.concurrency}, {ns.block}-request blocks interleaved; latency in ms")
    print("| arm | n | p50 | p90 | p99 |")
    print("|---|---|---|---|---|")
    for name, values in results.items():
        arr = np.asarray(values) * 1000
        p50, p90, p99 = np.percentile(arr, [50, 90, 99])
        print(f"| {name} | {arr.size} | {p50:.3f} | {p90:.3f} | {p99:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
