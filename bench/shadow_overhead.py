"""Does shadow sampling move the primary's latency? p50/p99 with sampling at 0 % and 10 %.

Three processes on 127.0.0.1: a fast fake upstream (bench/fake_upstream.py), and two `tbg serve`
proxies in front of it, one with shadow sampling at 0 % and one at 10 % (2 replays per sample).
The client alternates blocks of requests between the two so that machine noise hits both alike.
Bounded: `--requests` per arm, `--time-limit` for the whole run.

    python -m bench.shadow_overhead --requests 2000 --concurrency 1

Attribution (where the primaries' extra latency comes from), `--variants` adds arms at the highest
rate whose replays do not reach the primaries' upstream:
- `sep`: replays go to a second fake upstream process (the primaries' loop still sends them, parses
  and compares them; the primaries' upstream is not busier);
- `null`: replays never leave the proxy (a canned answer with logprobs; what remains is the shadow
  path's own CPU: replay bodies, JSON parse, run building, comparison, fold, publication).
- `drop`: sampled primaries are captured and queued, then dropped for budget (no replay at all):
  what sampling costs the primaries by itself.
`noaug`: the sampled primary is not augmented with logprobs (`augment_logprobs: false`): what
asking the upstream for logprobs costs the sampled primary itself. Variants combine with `+`
(`process+noaug`).
`process` adds an arm with the shadow worker process (TBG_SHADOW_WORKER=process); `tree=DIR` one
whose proxy runs the code in DIR (e.g. `git archive COMMIT | tar -x -C DIR`: before/after).
`--taskset` pins each process to a CPU list (e.g. `--taskset upstream=0,proxy=1,client=0`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
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
def process(args: list[str], url: str, env: dict[str, str] | None = None,
            cpus: str | None = None) -> Iterator[subprocess.Popen[bytes]]:  # fmt: skip
    if cpus:
        args = ["taskset", "-c", cpus, *args]
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
        yield proc
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


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(CPU seconds of the process, of its children: the shadow worker), from /proc."""

    def fields(p: str) -> list[str] | None:  # after "pid (comm)": state, ppid, ..., utime, stime
        try:
            return Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None

    def cpu(f: list[str]) -> float:
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

    own = fields(str(pid))
    children = sum(
        cpu(f) for e in os.listdir("/proc")
        if e.isdigit() and (f := fields(e)) is not None and f[1] == str(pid)
    )  # fmt: skip
    return (cpu(own) if own else math.nan), children


async def measure(urls: dict[str, str], requests: int, concurrency: int, block_size: int,
                  time_limit: float, on_warm: Callable[[], None]) -> dict[str, list[float]]:  # fmt: skip
    results: dict[str, list[float]] = {name: [] for name in urls}
    started = time.monotonic()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        for url in urls.values():  # warm-up: connections, code paths
            await block(session, url, 50, concurrency)
        on_warm()
        while min(len(v) for v in results.values()) < requests:
            if time.monotonic() - started > time_limit:
                break
            for name, url in urls.items():
                results[name] += await block(session, url, block_size, concurrency)
    return results


def _serve_variant(config_path: str, replays_to: str) -> int:
    """`tbg serve` whose replays go to `replays_to` (a base URL ending in /v1) or nowhere ("null").
    A diagnostic only: it swaps the shadow transport's class before the app is built."""
    from yarl import URL

    from bench.fake_upstream import _chat_logprobs, _tokens
    from proxy import serve
    from proxy.h1 import Limits
    from proxy.shadow import wiring
    from proxy.upstreams import endpoint_of

    json = ((b"Content-Type", b"application/json"),)

    class Redirected(wiring.UpstreamTransport):
        async def post_json(self, upstream: str, path: str, body: bytes,
                            client_headers: Mapping[str, str],
                            timeout_s: float) -> tuple[int, bytes]:  # fmt: skip
            if replays_to == "null":
                req = orjson.loads(body)
                tokens = _tokens(int(req.get("max_tokens") or 16))
                choice = {"index": 0, "finish_reason": "length",
                          "message": {"role": "assistant", "content": "".join(tokens)},
                          "logprobs": _chat_logprobs(tokens, int(req.get("top_logprobs") or 1))}  # fmt: skip
                usage = {"prompt_tokens": 5, "completion_tokens": len(tokens),
                         "total_tokens": 5 + len(tokens)}  # fmt: skip
                await asyncio.sleep(0)
                return 200, orjson.dumps({"id": "null", "object": "chat.completion",
                                          "choices": [choice], "usage": usage})  # fmt: skip
            pool = self._upstreams().pool
            endpoint = endpoint_of(replays_to)
            reply = await pool.fetch(endpoint, Limits(10.0, timeout_s, timeout_s), "POST",
                                     URL(f"{replays_to}{path}").raw_path, json, body)  # fmt: skip
            return reply.status, reply.body

    wiring.UpstreamTransport = Redirected  # type: ignore[misc]
    return serve.main(["--config", config_path])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000, help="per arm")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--block", type=int, default=100)
    parser.add_argument("--rates", default="0,0.1")
    parser.add_argument(
        "--variants",
        default="",
        help="comma-separated: sep, null, drop, noaug, process, a+b (see above)",
    )
    parser.add_argument("--taskset", default="", help="e.g. upstream=0,proxy=1,client=0")
    parser.add_argument("--time-limit", type=float, default=300.0)
    parser.add_argument(
        "--serve", nargs=2, metavar=("CONFIG", "REPLAYS_TO"), help=argparse.SUPPRESS
    )
    ns = parser.parse_args()
    if ns.serve:
        return _serve_variant(*ns.serve)
    cpus = dict(item.split("=", 1) for item in ns.taskset.split(",") if item)
    if "client" in cpus:
        os.sched_setaffinity(0, {int(c) for c in cpus["client"].split("-")})
    rates = [float(r) for r in ns.rates.split(",")]
    variants = [v for v in ns.variants.split(",") if v]
    upstream_port, second_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{upstream_port}/v1"
    second = f"http://127.0.0.1:{second_port}/v1"
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        for port in (upstream_port, second_port) if "sep" in variants else (upstream_port,):
            stack.enter_context(process(
                [sys.executable, "-m", "bench.fake_upstream", "--port", str(port)],
                f"http://127.0.0.1:{port}/v1/models", cpus=cpus.get("upstream")))  # fmt: skip
        arms = [(f"{rate:.0%}", rate, "") for rate in rates]
        arms += [(f"{max(rates):.0%}-{v.split('=')[0]}", max(rates), v) for v in variants]
        urls: dict[str, str] = {}
        pids: dict[str, int] = {}
        for name, rate, variant in arms:
            port = free_port()
            config = {
                "host": "127.0.0.1", "port": port, "log_level": "WARNING",
                "upstreams": [{"name": "fake", "base_url": upstream, "models": ["bench"]}],
                "shadow": {"enabled": True, "sample_rate": rate, "replays": 2,
                           "replays_per_minute": 1e9, "tokens_per_minute": 1e12},
            }  # fmt: skip
            parts = set(variant.split("+"))  # e.g. process+noaug
            if "drop" in parts:  # sampled, captured, queued, then dropped for budget: no replay
                config["shadow"]["tokens_per_minute"] = 1  # type: ignore[index]
            if "noaug" in parts:  # the sampled primary is sent as the client wrote it
                config["shadow"]["augment_logprobs"] = False  # type: ignore[index]
            path = Path(tmp) / f"proxy-{name}.yaml"
            path.write_text(yaml.safe_dump(config))
            args = ["tbg", "serve", "--config", str(path)]
            env = {"TBG_SHADOW_WORKER": "process" if "process" in parts else "inline"}
            if variant.startswith("tree="):  # the proxy's code from another checkout (before/after)
                env["PYTHONPATH"] = variant.removeprefix("tree=")
            if variant in ("sep", "null"):
                args = [sys.executable, "-m", "bench.shadow_overhead", "--serve", str(path),
                        second if variant == "sep" else "null"]  # fmt: skip
            proc = stack.enter_context(process(args, f"http://127.0.0.1:{port}/healthz",
                                               env=env, cpus=cpus.get("proxy")))  # fmt: skip
            pids[name] = proc.pid
            urls[name] = f"http://127.0.0.1:{port}/v1/chat/completions"
        urls["direct"] = f"{upstream}/chat/completions"
        load_before = os.getloadavg()[0]
        cpu0: dict[str, tuple[float, float]] = {}

        def on_warm() -> None:
            cpu0.update({name: cpu_seconds(pid) for name, pid in pids.items()})

        results = asyncio.run(
            measure(urls, ns.requests, ns.concurrency, ns.block, ns.time_limit, on_warm)
        )
        cpu1 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        load_after = os.getloadavg()[0]
    print(f"concurrency {ns.concurrency}, {ns.block}-request blocks interleaved; latency in ms; "
          f"load average {load_before:.2f} -> {load_after:.2f}")  # fmt: skip
    print(
        "| arm | n | p50 | p90 | p99 | p50 / 0 % | p99 / 0 % | proxy CPU µs/req | worker CPU µs/req |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    base = np.percentile(np.asarray(results[arms[0][0]]) * 1000, [50, 99])
    for name, values in results.items():
        arr = np.asarray(values) * 1000
        p50, p90, p99 = np.percentile(arr, [50, 90, 99])
        cpu = ["", ""]
        if name in cpu1:
            cpu = [
                f"{(b - a) / arr.size * 1e6:.0f}"
                for a, b in zip(cpu0[name], cpu1[name], strict=True)
            ]
        print(f"| {name} | {arr.size} | {p50:.3f} | {p90:.3f} | {p99:.3f} | "
              f"{p50 / base[0]:.2f} | {p99 / base[1]:.2f} | {cpu[0]} | {cpu[1]} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
