"""What `tbg measure` and `tbg sweep` share: endpoint options, the API key, SIGINT handling, and
the session that owns the client and the store."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from measure.execute import Budget, Outcome

EXIT_INTERRUPTED = 130


class UsageError(ValueError):
    """Bad options or environment; printed as one line, exit status 2."""


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {v}")
    return v


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {v}")
    return v


def level_arg(text: str) -> float:
    v = positive_float(text)
    if not 0.5 < v < 1:
        raise argparse.ArgumentTypeError(f"a confidence level in (0.5, 1), e.g. 0.95: {v}")
    return v


def add_endpoint_args(p: argparse.ArgumentParser, *, default_max_tokens: int) -> None:
    g = p.add_argument_group("endpoint")
    g.add_argument(
        "--base-url",
        required=True,
        help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1",
    )
    g.add_argument("--model", required=True, help="model name to request")
    g.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        metavar="NAME",
        help="environment variable holding the API key (default OPENAI_API_KEY; unset: no key)",
    )
    g.add_argument("--timeout", type=positive_float, default=300.0, help="per-request timeout (s)")
    g = p.add_argument_group("workload")
    g.add_argument("--prompts", metavar="FILE.jsonl", help="prompt set (default: the built-in 38)")
    g.add_argument("--prompt-limit", type=positive_int, help="use only the first N prompts")
    g.add_argument("--max-tokens", type=positive_int, default=default_max_tokens)
    g.add_argument(
        "--top-logprobs",
        type=int,
        default=5,
        help="top-k logprobs to request (0: do not request logprobs; OpenAI allows <= 20)",
    )
    g.add_argument("--level", type=level_arg, default=0.95, help="confidence level (default 0.95)")
    g.add_argument("--out", required=True, metavar="DIR", help="output directory (resumable)")
    g = p.add_argument_group("bounds")
    g.add_argument("--max-requests", type=positive_int, help="stop after this many requests")
    g.add_argument("--time-limit", type=positive_float, help="stop after this many seconds")


def api_key(name: str) -> str:
    """The key from the named variable; local servers need none, the SDK needs a string."""
    if not name.isidentifier():
        raise UsageError(f"--api-key-env: not a variable name: {name!r}")
    return os.environ.get(name) or "unused"


def budget(args: argparse.Namespace) -> Budget:
    deadline = None if args.time_limit is None else time.monotonic() + args.time_limit
    return Budget(args.max_requests, deadline)


def session_id() -> str:
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"


def out_dir(text: str) -> Path:
    p = Path(text)
    if p.exists() and not p.is_dir():
        raise UsageError(f"--out {p}: exists and is not a directory")
    return p


@contextlib.contextmanager
def sigint_sets(stop: asyncio.Event) -> Iterator[None]:
    """While active, SIGINT sets ``stop`` instead of raising KeyboardInterrupt."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGINT, stop.set)
    except (NotImplementedError, RuntimeError):  # not the main thread / not supported
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def nothing_measured(outcomes: Mapping[str, Outcome], base_url: str) -> str:
    """Why no run was recorded, with the cause the requests met (not only that they failed)."""
    stopped = [o.stopped for o in outcomes.values() if o.stopped]
    if stopped:
        return f"{stopped[0]}; endpoint {base_url}"
    failed = sum(o.failed for o in outcomes.values())
    errors = [e for o in outcomes.values() for e in o.errors]
    if errors:
        return f"all {failed} requests to {base_url} failed, e.g. {errors[0]}"
    return "no run recorded"
