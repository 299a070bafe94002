"""`tbg demo`: the embedded reference LLM + the proxy with shadow replay + a bounded mixed load
through the openai SDK, with the live T_bg estimate refreshing in the terminal.

Everything listens on 127.0.0.1 and stops by itself: the load is a fixed number of requests, and the
whole run has a wall-clock limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from proxy.cliparse import Parser
from proxy.demo_display import Screen, explore, next_step, progress_line, render, summary, wrap

PROMPTS: tuple[str, ...] = (
    "Write a short poem about the sea.",
    "Explain what a hash table is in two sentences.",
    "List three uses of copper.",
    "What is the capital of France, and why is it famous?",
    "Describe a sunrise to someone who has never seen one.",
    "Give me a recipe idea with rice and beans.",
    "Why is the sky blue?",
    "Summarise the plot of Romeo and Juliet.",
    "What are the benefits of regular exercise?",
    "Tell me a fun fact about octopuses.",
    "How does a bicycle stay upright?",
    "Suggest a name for a friendly robot and explain it.",
)


@dataclass(frozen=True, slots=True)
class DemoOptions:
    mode: str
    requests: int
    max_tokens: int
    waves: tuple[int, ...]
    sample_rate: float
    replays: int
    port: int | None
    time_limit: float
    temperature: float | None
    seed: int
    threads: int
    sigma: float | None = None
    keep: bool | None = None  # None: ask at the end when run in a terminal


DEFAULT_PORT = 8080  # the demo's preferred port; a free one is taken when it is busy


def parse_args(argv: Sequence[str]) -> DemoOptions:
    parser = Parser("tbg demo", description=__doc__)
    parser.add_argument(
        "--mode",
        default="batched",
        choices=["batched", "serial", "thermostat", "noise"],
        help="reference upstream mode (batched: real bf16 batch effects; thermostat: samples at "
        "a known T; noise: Gaussian logit noise of known σ)",
    )
    parser.add_argument(
        "--temperature", type=float, default=None, help="--mode thermostat only (default 0.05)"
    )
    parser.add_argument("--sigma", type=float, default=None, help="--mode noise only (default 0.5)")
    parser.add_argument("--requests", type=int, default=48, help="primary requests in all")
    parser.add_argument("--max-tokens", type=int, default=32, help="per request")
    parser.add_argument(
        "--waves", default="1,4,8", help="concurrency of successive load waves (load buckets)"
    )
    parser.add_argument("--sample-rate", type=float, default=1.0, help="share replayed")
    parser.add_argument("--replays", type=int, default=2, help="replays per sampled request")
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"proxy port on 127.0.0.1 (default {DEFAULT_PORT}, or a free port when "
        f"{DEFAULT_PORT} is taken; 0 = any free port)",
    )
    parser.add_argument("--time-limit", type=float, default=900.0, help="seconds, whole run")
    parser.add_argument("--seed", type=int, default=0, help="load generator seed")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the reference upstream (1: the proxy, the estimator and "
        "the load generator need the other core; two torch threads on a busy 2-core machine "
        "oversubscribe it and decode many times slower)",
    )
    keep = parser.add_mutually_exclusive_group()
    keep.add_argument(
        "--keep",
        action="store_true",
        default=None,
        help="after the load, keep the reference upstream and the proxy up until Ctrl-C, to explore "
        "/metrics, /tbg and /ui (in a terminal the demo asks)",
    )
    keep.add_argument(
        "--no-keep",
        dest="keep",
        action="store_false",
        help="stop everything at the end; do not ask",
    )
    ns = parser.parse_args(argv)
    try:
        waves = tuple(int(w) for w in ns.waves.split(",") if w.strip())
    except ValueError:
        parser.fail(f"--waves: {ns.waves!r} is not a comma-separated list of integers, e.g. 1,4,8")
    if not waves or min(waves) < 1:
        parser.fail(f"--waves: every wave must be an integer ≥ 1, e.g. 1,4,8 (got {ns.waves!r})")
    if ns.requests < 1 or ns.max_tokens < 1 or ns.replays < 1:
        parser.fail("--requests, --max-tokens and --replays must be ≥ 1")
    if not 0.0 <= ns.sample_rate <= 1.0:
        parser.fail(f"--sample-rate: {ns.sample_rate:g} is outside [0, 1]")
    if ns.time_limit <= 0 or ns.threads < 1:
        parser.fail("--time-limit must be > 0 and --threads ≥ 1")
    if ns.port is not None and not 0 <= ns.port <= 65535:
        parser.fail(f"--port: {ns.port} is outside 0..65535")
    if ns.temperature is not None and ns.mode != "thermostat":
        parser.fail(f"--temperature only applies to --mode thermostat (the mode is {ns.mode})")
    if ns.sigma is not None and ns.mode != "noise":
        parser.fail(f"--sigma only applies to --mode noise (the mode is {ns.mode})")
    if ns.mode == "thermostat":
        ns.temperature = 0.05 if ns.temperature is None else ns.temperature
        if ns.temperature <= 0:
            parser.fail("--temperature must be > 0")
    if ns.mode == "noise":
        ns.sigma = 0.5 if ns.sigma is None else ns.sigma
        if ns.sigma < 0:
            parser.fail("--sigma must be ≥ 0")
    if ns.port:  # an explicit port that is taken: say so now, not after the model has loaded
        taken = port_taken(ns.port)
        if taken:
            parser.fail(taken)
    return DemoOptions(
        ns.mode,
        ns.requests,
        ns.max_tokens,
        waves,
        ns.sample_rate,
        ns.replays,
        ns.port,
        ns.time_limit,
        ns.temperature,
        ns.seed,
        ns.threads,
        ns.sigma,
        ns.keep,
    )


def port_taken(port: int, host: str = "127.0.0.1") -> str | None:
    """A one-line message when `host:port` cannot be bound, else None."""
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return (
                f"{host}:{port} is already in use: stop what listens there or choose another --port"
            )
    return None


async def _drive(base_url: str, opts: DemoOptions, progress: list[int]) -> list[str]:
    from openai import AsyncOpenAI

    rng = random.Random(opts.seed)
    client = AsyncOpenAI(base_url=base_url, api_key="demo", max_retries=0, timeout=300)
    errors: list[str] = []
    per_wave = [opts.requests // len(opts.waves)] * len(opts.waves)
    per_wave[-1] += opts.requests - sum(per_wave)

    async def one(i: int) -> None:
        prompt = PROMPTS[i % len(PROMPTS)]
        kind = rng.choice(("chat", "chat-stream", "completions", "completions-stream"))
        stream = kind.endswith("-stream")
        try:
            result: Any
            if kind.startswith("chat"):
                messages: Any = [{"role": "user", "content": prompt}]
                result = await client.chat.completions.create(
                    model="smollm2",
                    messages=messages,
                    temperature=0,
                    max_tokens=opts.max_tokens,
                    stream=stream,
                )
            else:
                result = await client.completions.create(
                    model="smollm2",
                    prompt=f"Question: {prompt}\nAnswer:",
                    temperature=0,
                    max_tokens=opts.max_tokens,
                    stream=stream,
                )
            if stream:
                async for _ in result:
                    pass
        except Exception as exc:  # the demo reports errors; it does not die on one
            errors.append(f"{kind}: {type(exc).__name__}: {exc}")
        finally:
            progress[0] += 1

    index = 0
    try:
        for concurrency, count in zip(opts.waves, per_wave, strict=True):
            queue = list(range(index, index + count))
            index += count

            async def lane(items: list[int]) -> None:
                for i in items:
                    await one(i)

            lanes = [queue[j::concurrency] for j in range(concurrency)]
            await asyncio.gather(*(lane(items) for items in lanes if items))
    finally:
        await client.close()
    return errors


async def run_demo(opts: DemoOptions, out: TextIO) -> int:
    from aiohttp import web

    from proxy.app import make_app, make_runner
    from proxy.config import build_config
    from proxy.shadow.api import report
    from proxy.shadow.wiring import SHADOW
    from reference.launch import ReferenceProcess

    started = time.monotonic()
    mode_desc = opts.mode + (f" T={opts.temperature}" if opts.mode == "thermostat" else "")
    mode_desc += f" σ={opts.sigma}" if opts.mode == "noise" else ""
    port, note = choose_port(opts.port)
    out.write(f"starting the reference upstream (SmolLM2-135M on CPU, mode {mode_desc}) …\n")
    out.flush()
    with ReferenceProcess(
        mode=opts.mode,
        temperature=opts.temperature,
        sigma=opts.sigma,
        extra_args=("--threads", str(opts.threads)),
    ) as ref:
        config = build_config(
            {
                "host": "127.0.0.1",
                "port": port,
                "upstreams": [
                    {"name": "reference", "base_url": ref.base_url, "models": ["smollm2"]}
                ],
                "shadow": {
                    "enabled": True,
                    "sample_rate": opts.sample_rate,
                    "replays": opts.replays,
                    "max_concurrent": 2,
                    "queue_size": 1024,
                    "replays_per_minute": 100_000,
                    "tokens_per_minute": 10_000_000,
                    "delay_jitter_seconds": 0.5,
                },
            },
            os.environ,
        )
        app = make_app(config)
        runner = make_runner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        try:
            await site.start()
        except OSError as exc:  # taken between the check and now
            await runner.cleanup()
            raise DemoError(
                port_taken(port) or f"cannot listen on 127.0.0.1:{port}: {exc}"
            ) from None
        port = runner.addresses[0][1]
        proxy_url = f"http://127.0.0.1:{port}"
        out.write(f"proxy on {proxy_url}/v1 → upstream {ref.base_url}{note}\n")
        tap = app[SHADOW]
        screen = Screen(out)
        progress = [0]

        def show(force: bool = False) -> dict[str, Any]:
            now = report(tap, tokens=True)  # the demo's own exemplars may show tokens
            elapsed = time.monotonic() - started
            block = render(now, progress[0], opts.requests, elapsed)
            line = progress_line(now, progress[0], opts.requests, elapsed)
            screen.show(block, force=force, line=line)
            return now

        load = asyncio.create_task(_drive(f"{proxy_url}/v1", opts, progress), name="tbg-demo-load")
        errors: list[str] = []
        timed_out = False
        try:
            while not load.done():
                if time.monotonic() - started > opts.time_limit:
                    timed_out = True
                    load.cancel()
                    break
                show()
                await asyncio.wait({load}, timeout=1.0)
            if not timed_out:
                errors = load.result()
                remaining = max(1.0, opts.time_limit - (time.monotonic() - started))
                while not await tap.idle(1.0) and remaining > 0:
                    remaining -= 1.0
                    show()
            final = show(force=True)
            truth = opts.temperature if opts.mode == "thermostat" else None
            text = summary(final, errors, proxy_url, timed_out, truth=truth)
            out.write(wrap(text, out) + "\n")
            out.flush()
            if not timed_out and await _keep_up(opts.keep, out):
                out.write(wrap(explore(proxy_url), out) + "\n")
                out.flush()
                await _until_stopped()
        finally:
            screen.close()  # a stopped run (Ctrl-C, an error) leaves the terminal as it found it
            with contextlib.suppress(asyncio.CancelledError):
                if not load.done():
                    load.cancel()
                    await load
            await runner.cleanup()
    out.write(wrap(next_step(proxy_url, os.environ.get("TBG_ACTIVATE")), out) + "\n")
    return 1 if timed_out or errors else 0


KEEP_PROMPT_S = 60.0  # an unanswered question stops the servers after this long


async def _keep_up(keep: bool | None, out: TextIO) -> bool:
    """--keep / --no-keep as given; otherwise, at a terminal, ask (no answer in a minute: no)."""
    if keep is not None:
        return keep
    if not (out.isatty() and sys.stdin.isatty()):
        return False
    out.write("keep the proxy and the reference upstream up to explore them (until Ctrl-C)? [y/N] ")
    out.flush()
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[str] = loop.create_future()

    def readable() -> None:
        if not answer.done():
            answer.set_result(sys.stdin.readline())

    loop.add_reader(sys.stdin.fileno(), readable)
    try:
        text = await asyncio.wait_for(answer, KEEP_PROMPT_S)
    except TimeoutError:
        out.write("\n")
        return False
    finally:
        loop.remove_reader(sys.stdin.fileno())
    return text.strip().lower() in {"y", "yes"}


async def _until_stopped() -> None:
    """Until Ctrl-C or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


class DemoError(RuntimeError):
    """The demo cannot run; the message says what to change."""


def choose_port(requested: int | None) -> tuple[int, str]:
    """The port to listen on and a note for the user: `--port` as given, else DEFAULT_PORT when
    free, else any free port (so the demo runs beside a `tbg serve` on 8080)."""
    if requested is not None:
        return requested, ""
    if port_taken(DEFAULT_PORT) is None:
        return DEFAULT_PORT, ""
    return 0, f" ({DEFAULT_PORT} is taken, so a free port was chosen)"


def main(argv: list[str]) -> int:
    opts = parse_args(argv)
    try:
        return asyncio.run(run_demo(opts, sys.stdout))
    except KeyboardInterrupt:
        return 130
    except DemoError as exc:
        print(f"tbg demo: {exc}", file=sys.stderr)
        return 2
