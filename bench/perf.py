"""Side-by-side latency/throughput/memory harness: tbg-proxy against real peers, arms interleaved.

One run, one machine, one fast deterministic upstream (bench/fake_upstream.py). Arms:
  direct        client -> fake upstream
  tbg           client -> `tbg serve` (shadow off) -> upstream
  tbg-shadow10  client -> `tbg serve` (shadow sampling 10 %, 2 replays) -> upstream
  tbg-accesslog `tbg serve` at the default log_level INFO (a JSON access-log line per request)
  nginx         plain reverse proxy (proxy_buffering off, upstream keepalive): the floor
  vllm-router   the Rust router (PyPI wheel `vllm-router`)
  litellm       LiteLLM proxy (PyPI `litellm[proxy]`)
Peers come from `bash bench/peers/setup`; a peer that is not installed is skipped and said so.

Phases (each bounded in count and time):
  latency   concurrency 1, non-streaming chat, blocks of --block requests interleaved across arms;
            added latency = arm percentile - direct percentile.
  stream    concurrency 1, streaming chat: time to first chunk and mean inter-chunk gap.
  load      `wrk` (Debian) at several connection counts per arm: RPS and p99; max RPS whose p99 is
            within --p99-bound-ms. Its own ceiling: wrk against nginx serving a static file.
  memory    RSS of the tbg processes at idle, after the load phase, and per 100k requests served.

    python -m bench.perf --out perf.json                       # everything installed
    python -m bench.perf --arms direct,tbg --seconds 1 --out x.json   # the CI smoke
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
import yaml

from reference.launch import free_port

PEERS = Path(os.environ.get("TBG_BENCH_PEERS", Path.home() / ".cache/tbg-proxy/bench-peers"))
MASTER_KEY = "sk-bench-0123456789"
BODY = orjson.dumps(
    {"model": "bench", "messages": [{"role": "user", "content": "hi"}], "temperature": 0,
     "max_tokens": 16}
)  # fmt: skip
STREAM_BODY = orjson.dumps({**orjson.loads(BODY), "stream": True})
ALL_ARMS = ("direct", "tbg", "tbg-shadow10", "tbg-accesslog", "nginx", "vllm-router", "litellm")


@dataclass
class Arm:
    name: str
    base: str  # URL up to and including /v1
    pid: int | None = None  # the process whose RSS we follow (tbg arms)
    headers: dict[str, str] | None = None
    cpu_pid: int | None = None  # the process (with its children) whose CPU per request we count


def _wait(
    url: str, proc: subprocess.Popen[bytes], name: str, err: Any, timeout: float = 120
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            err.seek(0)
            raise RuntimeError(f"{name} exited: {err.read().decode(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError):
            req = urllib.request.Request(url, headers={"Authorization": f"Bearer {MASTER_KEY}"})
            urllib.request.urlopen(req, timeout=2).read()
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} not ready at {url}")
        time.sleep(0.2)


@contextlib.contextmanager
def started(
    args: list[str], ready: str, name: str, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    # stderr to a file, never an unread pipe: a chatty server (access log on) would block on it.
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err,
                                env={**os.environ, **(env or {})}, start_new_session=True)  # fmt: skip
        try:
            _wait(ready, proc, name, err)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _tbg(
    stack: contextlib.ExitStack, tmp: Path, upstream: str, rate: float | None, log: bool = False,
) -> Arm:  # fmt: skip
    port = free_port()
    config: dict[str, Any] = {
        "host": "127.0.0.1", "port": port, "log_level": "INFO" if log else "WARNING",
        "upstreams": [{"name": "fake", "base_url": upstream, "models": ["bench"]}],
    }  # fmt: skip
    if rate is not None:
        config["shadow"] = {"enabled": True, "sample_rate": rate, "replays": 2,
                            "replays_per_minute": 1e9, "tokens_per_minute": 1e12}  # fmt: skip
    path = tmp / f"tbg-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    args = ["tbg", "serve", "--config", str(path)]
    proc = stack.enter_context(started(args, f"http://127.0.0.1:{port}/healthz", "tbg"))
    name = "tbg-accesslog" if log else "tbg" if rate is None else f"tbg-shadow{round(rate * 100)}"
    return Arm(name, f"http://127.0.0.1:{port}/v1", pid=proc.pid, cpu_pid=proc.pid)


def _nginx_conf(tmp: Path, port: int, upstream_port: int | None, static: bool) -> Path:
    root = tmp / f"nginx-{port}"
    (root / "logs").mkdir(parents=True)
    (root / "static").mkdir()
    (root / "static" / "file.json").write_bytes(b"{}" * 200)
    for d in (tmp, root, root / "static"):  # nginx workers drop root: let them read the file
        d.chmod(0o755)
    if static:
        location = f"location / {{ root {root}/static; }}"
        ups = ""
    else:
        ups = f"upstream fake {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}"
        location = ("location / { proxy_pass http://fake; proxy_http_version 1.1; "
                    "proxy_set_header Connection \"\"; proxy_buffering off; }")  # fmt: skip
    conf = root / "nginx.conf"
    conf.write_text(
        f"daemon off; worker_processes 1; pid {root}/nginx.pid; error_log {root}/logs/e.log;\n"
        f"events {{ worker_connections 1024; }}\n"
        f"http {{ access_log off; client_body_temp_path {root}/b; proxy_temp_path {root}/p;\n"
        f"  fastcgi_temp_path {root}/f; uwsgi_temp_path {root}/u; scgi_temp_path {root}/s;\n"
        f"  keepalive_requests 100000000; {ups}\n"
        f"  server {{ listen 127.0.0.1:{port}; {location} }} }}\n"
    )
    return conf


def _nginx(stack: contextlib.ExitStack, tmp: Path, upstream_port: int | None) -> Arm:
    port = free_port()
    conf = _nginx_conf(tmp, port, upstream_port, static=upstream_port is None)
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    ready = f"http://127.0.0.1:{port}" + ("/file.json" if upstream_port is None else "/v1/models")
    proc = stack.enter_context(started([exe, "-c", str(conf), "-e", "stderr"], ready, "nginx"))
    return Arm("nginx", f"http://127.0.0.1:{port}/v1", cpu_pid=proc.pid)


def _router(stack: contextlib.ExitStack, upstream_port: int) -> Arm:
    port = free_port()
    exe = str(PEERS / "vllm-router/bin/vllm-router")
    args = [exe, "--host", "127.0.0.1", "--port", str(port), "--worker-urls",
            f"http://127.0.0.1:{upstream_port}", "--policy", "round_robin"]  # fmt: skip
    proc = stack.enter_context(started(args, f"http://127.0.0.1:{port}/v1/models", "vllm-router"))
    return Arm("vllm-router", f"http://127.0.0.1:{port}/v1", cpu_pid=proc.pid)


def _litellm(stack: contextlib.ExitStack, tmp: Path, upstream: str) -> Arm:
    port = free_port()
    conf = tmp / "litellm.yaml"
    conf.write_text(yaml.safe_dump({"model_list": [{"model_name": "*", "litellm_params": {
        "model": "openai/*", "api_base": upstream, "api_key": "dummy"}}]}))  # fmt: skip
    exe = str(PEERS / "litellm/bin/litellm")
    args = [exe, "--config", str(conf), "--port", str(port), "--host", "127.0.0.1",
            "--num_workers", "1"]  # fmt: skip
    env = {"LITELLM_MASTER_KEY": MASTER_KEY, "LITELLM_LOG": "ERROR"}
    proc = stack.enter_context(
        started(args, f"http://127.0.0.1:{port}/health/liveliness", "litellm", env)
    )
    return Arm("litellm", f"http://127.0.0.1:{port}/v1", cpu_pid=proc.pid,
               headers={"Authorization": f"Bearer {MASTER_KEY}"})  # fmt: skip


# -- phases ------------------------------------------------------------------------------------


async def _latency_block(session: aiohttp.ClientSession, arm: Arm, n: int) -> list[float]:
    out: list[float] = []
    headers = {"Content-Type": "application/json", **(arm.headers or {})}
    url = arm.base + "/chat/completions"
    for _ in range(n):
        t0 = time.perf_counter()
        async with session.post(url, data=BODY, headers=headers) as resp:
            await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{arm.name}: status {resp.status}")
        out.append(time.perf_counter() - t0)
    return out


async def _stream_one(session: aiohttp.ClientSession, arm: Arm) -> tuple[float, float]:
    headers = {"Content-Type": "application/json", **(arm.headers or {})}
    t0 = time.perf_counter()
    stamps: list[float] = []
    async with session.post(arm.base + "/chat/completions", data=STREAM_BODY,
                            headers=headers) as resp:  # fmt: skip
        if resp.status != 200:
            raise RuntimeError(f"{arm.name}: stream status {resp.status}")
        async for _chunk in resp.content.iter_any():
            stamps.append(time.perf_counter())
    ttft = stamps[0] - t0
    gap = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else 0.0
    return ttft, gap


async def latency_phase(arms: list[Arm], requests: int, block: int, seconds: float,
                        stream: bool) -> dict[str, Any]:  # fmt: skip
    samples: dict[str, list[Any]] = {a.name: [] for a in arms}
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        for arm in arms:  # warm-up: connections, code paths, caches
            for _ in range(20):
                await (_stream_one(session, arm) if stream else _latency_block(session, arm, 1))
        while min(len(v) for v in samples.values()) < requests and time.monotonic() < deadline:
            for arm in arms:
                if stream:
                    samples[arm.name] += [await _stream_one(session, arm) for _ in range(block)]
                else:
                    samples[arm.name] += await _latency_block(session, arm, block)
    out: dict[str, Any] = {}
    for name, values in samples.items():
        if stream:
            arr = np.asarray(values) * 1000
            out[name] = {"n": len(values), "ttft_p50_ms": float(np.percentile(arr[:, 0], 50)),
                         "ttft_p99_ms": float(np.percentile(arr[:, 0], 99)),
                         "gap_mean_ms": float(arr[:, 1].mean())}  # fmt: skip
        else:
            arr = np.asarray(values) * 1000
            p50, p90, p99 = (float(x) for x in np.percentile(arr, [50, 90, 99]))
            out[name] = {"n": arr.size, "p50_ms": p50, "p90_ms": p90, "p99_ms": p99}
    if "direct" in out:
        ref = out["direct"]
        for row in out.values():
            keys = ("ttft_p50_ms", "ttft_p99_ms") if stream else ("p50_ms", "p99_ms")
            for k in keys:
                row["added_" + k] = row[k] - ref[k]
    return out


_WRK_LUA = """wrk.method = "POST"
wrk.body = '%s'
wrk.headers["Content-Type"] = "application/json"
%s"""
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _wrk(url: str, connections: int, seconds: float, lua: Path | None) -> dict[str, float]:
    args = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds:g}s", "--latency"]
    if lua is not None:
        args += ["-s", str(lua)]
    text = subprocess.run([*args, url], capture_output=True, text=True, timeout=seconds + 30,
                          check=True).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)", text)
    total = int(re.search(r"(\d+) requests in", text).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if errors:
        raise RuntimeError(f"wrk {url}: {errors.group(1)} non-2xx responses")
    p99 = float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")
    return {"connections": connections, "rps": rps, "p99_ms": p99, "requests": total}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` and its direct children (nginx's workers), in seconds."""
    pids = [pid] + [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                    and _stat(int(p.name))[1] == pid]  # fmt: skip
    return sum(_stat(p)[0] for p in pids)


def _stat(pid: int) -> tuple[float, int]:
    """(utime + stime in seconds, ppid); (0, 0) for a process that is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), int(fields[1])


def load_phase(arms: list[Arm], levels: list[int], seconds: float, tmp: Path, bound_ms: float,
               repeats: int) -> dict[str, Any]:  # fmt: skip
    out: dict[str, Any] = {a.name: {"runs": []} for a in arms}
    for arm in arms:
        headers = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in (arm.headers or {}).items())
        lua = tmp / f"wrk-{arm.name}.lua"
        lua.write_text(_WRK_LUA % (BODY.decode(), headers))
        out[arm.name]["lua"] = str(lua)
    for _ in range(repeats):  # interleaved: every arm at a level, then the next level
        for c in levels:
            for arm in arms:
                before = cpu_seconds(arm.cpu_pid) if arm.cpu_pid else 0.0
                run = _wrk(arm.base + "/chat/completions", c, seconds, Path(out[arm.name]["lua"]))
                if arm.cpu_pid:  # the arm's own CPU per request: load-independent, unlike RPS
                    used = cpu_seconds(arm.cpu_pid) - before
                    run["cpu_us_per_request"] = 1e6 * used / max(run["requests"], 1)
                out[arm.name]["runs"].append(run)
    for arm in arms:
        runs = out[arm.name]["runs"]
        ok = [r["rps"] for r in runs if r["p99_ms"] <= bound_ms]
        out[arm.name]["max_rps_within_bound"] = max(ok) if ok else 0.0
        out[arm.name]["max_rps"] = max(r["rps"] for r in runs)
        top = max(levels)
        sat = [r["p99_ms"] for r in runs if r["connections"] == top]
        out[arm.name]["p99_at_saturation_ms"] = float(np.median(sat))
        cpu = [r["cpu_us_per_request"] for r in runs if "cpu_us_per_request" in r]
        if cpu:
            out[arm.name]["cpu_us_per_request_median"] = float(np.median(cpu))
        del out[arm.name]["lua"]
    return out


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def growth_phase(arm: Arm, requests: int, tmp: Path, time_limit: float) -> dict[str, float]:
    """RSS before/after at least `requests` more requests (wrk, 16 connections), per 100k."""
    assert arm.pid is not None
    lua = tmp / "wrk-growth.lua"
    lua.write_text(_WRK_LUA % (BODY.decode(), ""))
    before, served, started_at = rss_mb(arm.pid), 0, time.monotonic()
    while served < requests and time.monotonic() - started_at < time_limit:
        served += int(_wrk(arm.base + "/chat/completions", 16, 5, lua)["requests"])
    after = rss_mb(arm.pid)
    return {"requests": served, "rss_before_mb": before, "rss_after_mb": after,
            "growth_mb_per_100k": (after - before) * 100_000 / max(served, 1)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)  # fmt: skip
    parser.add_argument("--arms", default=",".join(ALL_ARMS))
    parser.add_argument("--requests", type=int, default=3000, help="latency samples per arm")
    parser.add_argument("--stream-requests", type=int, default=500)
    parser.add_argument("--block", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=60.0, help="time limit per c=1 phase")
    parser.add_argument("--levels", default="1,8,32,64", help="wrk connection counts")
    parser.add_argument("--wrk-seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--p99-bound-ms", type=float, default=50.0)
    parser.add_argument("--growth-requests", type=int, default=100_000)
    parser.add_argument("--growth-time-limit", type=float, default=120.0)
    parser.add_argument("--out", type=Path, required=True)
    ns = parser.parse_args()
    wanted = [a for a in ns.arms.split(",") if a]
    skipped: dict[str, str] = {}
    have_wrk = shutil.which("wrk") is not None
    have_nginx = shutil.which("nginx") is not None or Path("/usr/sbin/nginx").exists()
    for name, ok, why in (
        ("nginx", have_nginx, "nginx not installed (bash bench/peers/setup)"),
        ("vllm-router", (PEERS / "vllm-router/bin/vllm-router").exists(), "not installed"),
        ("litellm", (PEERS / "litellm/bin/litellm").exists(), "not installed"),
    ):
        if name in wanted and not ok:
            wanted.remove(name)
            skipped[name] = why
    result: dict[str, Any] = {"arms": wanted, "skipped": skipped, "config": vars(ns) | {
        "out": str(ns.out)}, "cpus": os.cpu_count(), "python": sys.version.split()[0]}  # fmt: skip
    up_port = free_port()
    upstream = f"http://127.0.0.1:{up_port}/v1"
    with tempfile.TemporaryDirectory() as tmpdir, contextlib.ExitStack() as stack:
        tmp = Path(tmpdir)
        up = stack.enter_context(started([sys.executable, "-m", "bench.fake_upstream", "--port",
                                     str(up_port)], f"{upstream}/models", "fake upstream"))  # fmt: skip
        arms: list[Arm] = []
        for name in wanted:
            if name == "direct":
                arms.append(Arm("direct", upstream, cpu_pid=up.pid))  # the upstream's own cost
            elif name == "tbg":
                arms.append(_tbg(stack, tmp, upstream, None))
            elif name == "tbg-accesslog":  # the default log_level INFO: one JSON line per request
                arms.append(_tbg(stack, tmp, upstream, None, log=True))
            elif name.startswith("tbg-shadow"):
                arms.append(_tbg(stack, tmp, upstream, int(name[len("tbg-shadow") :]) / 100))
            elif name == "nginx":
                arms.append(_nginx(stack, tmp, up_port))
            elif name == "vllm-router":
                arms.append(_router(stack, up_port))
            elif name == "litellm":
                arms.append(_litellm(stack, tmp, upstream))
            else:
                raise SystemExit(f"unknown arm {name}")
        tbg_arms = [a for a in arms if a.pid is not None]
        result["rss_idle_mb"] = {a.name: rss_mb(a.pid) for a in tbg_arms if a.pid}
        result["latency_c1"] = asyncio.run(
            latency_phase(arms, ns.requests, ns.block, ns.seconds, stream=False)
        )
        result["stream_c1"] = asyncio.run(latency_phase(
            arms, ns.stream_requests, max(1, ns.block // 4), ns.seconds, stream=True))  # fmt: skip
        if have_wrk:
            if have_nginx:
                static = _nginx(stack, tmp, None)
                result["wrk_ceiling"] = _wrk(static.base.removesuffix("/v1") + "/file.json",
                                             64, ns.wrk_seconds, None)  # fmt: skip
            levels = [int(x) for x in ns.levels.split(",")]
            result["load"] = load_phase(arms, levels, ns.wrk_seconds, tmp, ns.p99_bound_ms,
                                        ns.repeats)  # fmt: skip
            result["rss_after_load_mb"] = {a.name: rss_mb(a.pid) for a in tbg_arms if a.pid}
            if ns.growth_requests and tbg_arms:
                result["growth"] = growth_phase(tbg_arms[0], ns.growth_requests, tmp,
                                                ns.growth_time_limit)  # fmt: skip
        else:
            result["load"] = "skipped: wrk not installed (bash bench/peers/setup)"
    ns.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(ns.out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
