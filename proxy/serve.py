"""`tbg serve`: load the config, run the proxy until SIGINT/SIGTERM, then drain and stop."""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import signal
import sys

from aiohttp import web

from proxy.app import LIFECYCLE, make_app, make_runner
from proxy.cliparse import Parser, add_field_flags
from proxy.config import KNOBS, Config, ConfigError, Overrides, load_config
from proxy.logs import configure_logging
from proxy.probe import public_url
from proxy.tracing import configure_provider

log = logging.getLogger("tbg.serve")


def build_parser() -> Parser:
    parser = Parser(
        "tbg serve",
        description="Transparent OpenAI-compatible proxy. Flags override TBG_* env vars, "
        "which override the YAML file (see docs/configuration.md).",
    )
    parser.add_argument("--config", metavar="FILE", help="YAML config file (env: TBG_CONFIG)")
    parser.add_argument(
        "--upstream",
        action="append",
        default=[],
        metavar="[NAME=]URL",
        help="upstream base URL, e.g. http://127.0.0.1:8000/v1; repeatable; replaces the file's "
        "upstreams (env: TBG_UPSTREAM, comma-separated)",
    )
    add_field_flags(parser, (k for k in KNOBS if k.path[0] != "shadow"))
    quick = parser.add_argument_group(
        "quick start",
        "measure with no config file: naming a model (or any flag below) turns shadow replay on",
    )
    quick.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME",
        help="a model the one --upstream serves, measured (shadow replay on); repeatable",
    )
    add_field_flags(quick, (k for k in KNOBS if k.path[0] == "shadow"))
    return parser


def overrides_from(args: argparse.Namespace) -> Overrides:
    fields = {k.dest: getattr(args, k.dest) for k in KNOBS if k.flag is not None}
    return Overrides(args.config, tuple(args.upstream), tuple(args.model), **fields)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(overrides_from(args), os.environ)
    except ConfigError as exc:
        print(f"tbg serve: config error: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level)
    try:
        try:
            import uvloop
        except ImportError:
            asyncio.run(serve(config))
        else:
            uvloop.run(serve(config))
    except StartError as exc:
        print(f"tbg serve: {exc}", file=sys.stderr)
        return 2
    return 0


class StartError(RuntimeError):
    """The proxy cannot start (e.g. its port is taken); the message says what to change."""


def _measuring(config: Config, port: int) -> str:
    """One line on stderr at start: what this proxy measures, so a quick start is not silent.
    `port` is the bound one (with --port 0, the one the system chose)."""
    url = f"http://{config.host}:{port}"
    shadow = config.shadow_config
    if not shadow.enabled:
        what = "shadow replay off: nothing is measured (GET /tbg says how to turn it on)"
    else:
        models = sorted({m for u in config.upstreams for m in u.models}) or [
            "every model as 'other'"
        ]
        what = (
            f"shadow replay on: {', '.join(models)}; sample rate {shadow.defaults.sample_rate:g}, "
            f"{shadow.replays} replays, ceiling {shadow.defaults.ceiling:g}; live T_bg at {url}/tbg"
        )
    ups = ", ".join(f"{u.name} ({public_url(u.base_url)})" for u in config.upstreams)
    return f"tbg serve: proxy at {url}/v1 -> {ups}; {what}; live page {url}/ui"


async def serve(config: Config) -> None:
    """Run until SIGINT/SIGTERM; then stop accepting, drain up to `drain_seconds`, clean up."""
    flush_spans = configure_provider() if config.shadow_config.tracing else None  # OTLP export
    app = make_app(config)
    runner = make_runner(app)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started = False
    try:
        site = web.TCPSite(runner, config.host, config.port)
        try:
            await site.start()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise StartError(
                f"{config.host}:{config.port} is already in use: stop what listens there or "
                "choose another --port"
            ) from None
        started = True
        port = runner.addresses[0][1] if runner.addresses else config.port
        measuring = _measuring(config, port)
        if sys.stderr.isatty():  # a person at a terminal; pipelines get it in the JSON log below
            print(measuring, file=sys.stderr, flush=True)
        log.info(
            "listening",
            extra={
                "host": config.host,
                "port": port,
                "upstreams": [u.name for u in config.upstreams],
                "proxy_auth": bool(config.api_keys),
                "measuring": measuring,
            },
        )
        await stop.wait()
        log.info("draining", extra={"deadline_s": config.drain_seconds})
        app[LIFECYCLE].draining = True
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
        if flush_spans is not None:
            await asyncio.to_thread(flush_spans)  # the spans still buffered
        if started:
            log.info("stopped")
