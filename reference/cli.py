"""`tbg reference`: prepare the cached model, or serve it. Torch is imported only after parsing."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import os
import signal
import socket
import sys
import time

from proxy.cliparse import Parser

MODES = ("batched", "serial", "thermostat", "noise")


def build_parser() -> Parser:
    p = Parser(
        "tbg reference",
        description="Serve SmolLM2-135M-Instruct (CPU) behind an OpenAI-compatible API.",
    )
    p.add_argument("--prepare", action="store_true", help="convert the model if needed, print it")
    p.add_argument("--mode", choices=MODES, default="batched", help="how it decodes")
    p.add_argument("--temperature", type=float, default=None, help="thermostat: T_bg to serve")
    p.add_argument("--sigma", type=float, default=None, help="noise: std of the logit noise")
    p.add_argument("--host", default="127.0.0.1", help="listen address")
    p.add_argument("--port", type=int, default=8000, help="listen port (0 = any free)")
    p.add_argument(
        "--max-batch", type=int, default=None, help="--mode batched only: largest batch (default 8)"
    )
    p.add_argument(
        "--gather-ms",
        type=float,
        default=None,
        help="--mode batched only: gather window (default 5)",
    )
    p.add_argument(
        "--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="weights and math"
    )
    p.add_argument("--model-name", default="smollm2", help="the served model id")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: ≤ 2)")
    p.add_argument("--default-max-tokens", type=int, default=256, help="when a request sets none")
    p.add_argument("--max-model-len", type=int, default=2048, help="context length cap")
    return p


def _validate(args: argparse.Namespace, parser: Parser) -> None:
    if args.mode == "thermostat" and (args.temperature is None or args.temperature <= 0):
        parser.fail("--mode thermostat needs --temperature T > 0")
    if args.mode == "noise" and (args.sigma is None or args.sigma < 0):
        parser.fail("--mode noise needs --sigma S >= 0")
    if args.temperature is not None and args.mode != "thermostat":
        parser.fail(f"--temperature only applies to --mode thermostat (the mode is {args.mode})")
    if args.sigma is not None and args.mode != "noise":
        parser.fail(f"--sigma only applies to --mode noise (the mode is {args.mode})")
    for flag, value in (("--max-batch", args.max_batch), ("--gather-ms", args.gather_ms)):
        if value is not None and args.mode != "batched":
            parser.fail(f"{flag} only applies to --mode batched (the mode is {args.mode})")
    args.max_batch = 8 if args.max_batch is None else args.max_batch
    args.gather_ms = 5.0 if args.gather_ms is None else args.gather_ms
    if args.max_batch < 1 or args.gather_ms < 0:
        parser.fail("--max-batch must be ≥ 1 and --gather-ms ≥ 0")
    if not 0 <= args.port <= 65535:
        parser.fail("--port must be in 0..65535")


async def _watch_parent(stop: asyncio.Event) -> None:
    """When started by `ReferenceProcess`, stop once that parent process has gone."""
    parent = os.environ.get("TBG_REFERENCE_PARENT_PID")
    if not parent or not parent.isdigit():
        return
    while os.getppid() == int(parent):  # noqa: ASYNC110 (polling a pid; no event exists)
        await asyncio.sleep(1.0)
    stop.set()


def _taken(host: str, port: int) -> str:
    return f"{host}:{port} is already in use: stop what listens there or choose another --port"


class PortInUseError(RuntimeError):
    """The listen port is taken; the message says what to change."""


async def _serve(args: argparse.Namespace) -> None:
    from aiohttp import web

    from reference.model import load_model
    from reference.policy import policy_for
    from reference.scheduler import BatchPolicy
    from reference.server import ServerConfig, make_app

    t0 = time.monotonic()
    threads = args.threads or max(1, min(2, os.cpu_count() or 1))
    loaded = await asyncio.to_thread(load_model, args.dtype, threads)
    max_batch = args.max_batch if args.mode == "batched" else 1
    config = ServerConfig(
        model_name=args.model_name,
        mode=args.mode,
        batching=BatchPolicy(max_batch=max_batch, gather_s=args.gather_ms / 1000.0),
        default_max_tokens=args.default_max_tokens,
        max_context=min(args.max_model_len, int(loaded.model.config.max_position_embeddings)),
    )
    app = make_app(config, loaded, policy_for(args.mode, args.temperature, args.sigma))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        if exc.errno != errno.EADDRINUSE:
            raise
        raise PortInUseError(_taken(args.host, args.port)) from None
    port = args.port
    server = getattr(site, "_server", None)
    if port == 0 and server is not None and server.sockets:
        port = server.sockets[0].getsockname()[1]
    print(
        f"reference: mode={args.mode} dtype={args.dtype} max_batch={max_batch} "
        f"threads={threads} started in {time.monotonic() - t0:.1f}s",
        file=sys.stderr,
        flush=True,
    )
    print(f"ready http://{args.host}:{port}/v1", flush=True)
    watchdog = asyncio.create_task(_watch_parent(stop), name="reference-parent-watchdog")
    try:
        await stop.wait()
        print("reference: stopping", file=sys.stderr, flush=True)
    finally:
        watchdog.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watchdog
        t_stop = time.monotonic()
        await runner.cleanup()
        print(
            f"reference: stopped in {time.monotonic() - t_stop:.1f}s", file=sys.stderr, flush=True
        )


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _validate(args, parser)
    os.environ["HF_HUB_OFFLINE"] = "1"
    if args.prepare:
        from reference.model import ModelUnavailableError, prepare_model

        try:
            print(prepare_model())
        except ModelUnavailableError as exc:
            print(f"tbg reference: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.port:  # a taken port is named now, not after the model has loaded
        with socket.socket() as sock:
            try:
                sock.bind((args.host, args.port))
            except OSError:
                print(f"tbg reference: {_taken(args.host, args.port)}", file=sys.stderr)
                return 2
    with contextlib.suppress(KeyboardInterrupt):
        try:
            asyncio.run(_serve(args))
        except PortInUseError as exc:
            print(f"tbg reference: {exc}", file=sys.stderr)
            return 2
    return 0
