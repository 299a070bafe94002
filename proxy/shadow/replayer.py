"""The replayer pool: `max_concurrent` worker tasks take finished primaries off the shadow queue,
replay them against the same upstream (transport, timeouts, per-upstream logprobs detection) and
hand primary + replays to the Aggregator. Nothing here runs on the request's hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from estimator.builders import (
    BuildError,
    run_from_chat_response,
    run_from_chat_stream,
    run_from_completion_response,
    run_from_completion_stream,
    text_tokens,
)
from estimator.model import Run
from proxy.shadow.config import ShadowConfig
from proxy.shadow.load import MetricsFetcher
from proxy.shadow.sampling import Sampler
from proxy.shadow.view import Key
from proxy.shadow.wire import replay_body
from proxy.tap import Exchange, RequestInfo

log = logging.getLogger("tbg.shadow")

ROUTE_PATHS: Mapping[str, str] = {"chat": "/chat/completions", "completions": "/completions"}
# Logprobs support is learned per (upstream, model as the client names it): model names are
# client-chosen, so the table is bounded (cleared when full: it is relearned by the next replays).
LogprobsKey = tuple[str, str]
LEARNED_LIMIT = 1024


def logprobs_key(request: RequestInfo) -> LogprobsKey:
    model = request.body.get("model")
    return request.upstream, model if isinstance(model, str) else ""


def remember(table: dict[Any, Any], key: Any, value: Any) -> None:
    """`table[key] = value`, keeping the table at most LEARNED_LIMIT entries."""
    if key not in table and len(table) >= LEARNED_LIMIT:
        table.clear()
    table[key] = value


class ReplayTransport(MetricsFetcher, Protocol):
    """How replays reach an upstream: the proxy's pooled session, timeouts and per-upstream auth."""

    async def post_json(
        self,
        upstream: str,
        path: str,
        body: bytes,
        client_headers: Mapping[str, str],
        timeout_s: float,
    ) -> tuple[int, bytes]:
        """POST `body` to <base_url><path>; returns (status, body). Raises on I/O errors."""
        ...


class TrialSink(Protocol):
    """Where the replayer reports: the Aggregator in-process, a pipe to it from the worker process."""

    def count(self, key: Key, what: str) -> None: ...
    def drop(self, key: Key, reason: str) -> None: ...
    def replay_request(self, key: Key, outcome: str, tokens: int = 0) -> None: ...
    async def fold(self, request: RequestInfo, runs: tuple[Run, ...], load: int) -> None:
        """Compare one trial and fold it into the estimates."""
        ...

    def on_internal_error(self) -> None: ...


class ReplayLoad(Protocol):
    """The load a replay meets when it is sent (proxy.shadow.load.LoadTracker, maybe remote)."""

    async def acquire(self, upstream: str) -> int:
        """Mark one replay in flight; returns the load it meets (itself included)."""
        ...

    def release(self, upstream: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Job:
    """A finished, sampled primary waiting for its replays."""

    exchange: Exchange
    key: Key
    load_at_start: int  # the load the primary met (itself included)


def _primary_run(exchange: Exchange) -> Run:
    route = exchange.request.route
    if exchange.request.stream:
        build_stream = run_from_chat_stream if route == "chat" else run_from_completion_stream
        return build_stream(list(exchange.events))
    if exchange.response_body is None:
        raise BuildError("no response body captured")
    body = orjson.loads(exchange.response_body)
    build = run_from_chat_response if route == "chat" else run_from_completion_response
    return build(body)


def _usage_tokens(exchange: Exchange) -> tuple[int | None, int | None]:
    """(prompt_tokens, completion_tokens) from the primary's usage, when the upstream sent one."""
    usage: Any = None
    if exchange.request.stream:
        for event in reversed(exchange.events):
            if event.get("usage"):
                usage = event["usage"]
                break
    elif exchange.response_body is not None:
        with contextlib.suppress(orjson.JSONDecodeError):
            usage = orjson.loads(exchange.response_body).get("usage")
    if not isinstance(usage, Mapping):
        return None, None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (
        prompt if isinstance(prompt, int) else None,
        completion if isinstance(completion, int) else None,
    )


def comparable_runs(runs: tuple[Run, ...]) -> tuple[Run, ...]:
    """Runs that can be compared position by position.

    A run without logprobs is tokenised from its text (the builders' fallback), which does not line
    up with real tokens. When the two kinds are mixed (a primary captured before logprobs support
    was detected, or with augment_logprobs off), keep the runs with real tokens if there are two or
    more of them, else compare every run by its text tokens.
    """
    real = tuple(r for r in runs if r.logprobs is not None)
    if len(real) == len(runs) or not real:
        return runs
    if len(real) >= 2:
        return real
    return tuple(
        Run(tokens=text_tokens(r.text), logprobs=None, top_logprobs=None, text=r.text,
            finish_reason=r.finish_reason)
        for r in runs
    )  # fmt: skip


class Replayer:
    """Owns the bounded queue of finished primaries and the worker tasks that replay them.

    `queue_size` bounds the waiting jobs (the ShadowTap drops on `full()`); `pending()` counts
    waiting and in-progress trials (for `ShadowTap.idle`). In the shadow worker process the queue is
    unbounded (`queue_size=0`): the proxy process bounds what it sends.
    """

    def __init__(
        self,
        config: ShadowConfig,
        transport: ReplayTransport,
        sampler: Sampler,
        load: ReplayLoad,
        sink: TrialSink,
        *,
        queue_size: int | None = None,
    ) -> None:
        self._config = config
        self._transport = transport
        self._sampler = sampler
        self._load = load
        self._agg = sink
        size = config.queue_size if queue_size is None else queue_size
        self._queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=size)
        self._workers: list[asyncio.Task[None]] = []
        self.busy = 0
        # Per (upstream, model): absent = unknown (config "auto"); True once a replay came back
        # with logprobs; False once it did not, or failed asking for them while a plain one
        # worked. "yes"/"no" in the config fix it for every upstream.
        self._logprobs_ok: dict[LogprobsKey, bool] = {}
        self._logprobs_fixed = {"yes": True, "no": False}.get(config.logprobs)
        self.on_logprobs_detected: Callable[[LogprobsKey, bool], None] = lambda _key, _ok: None

    def supports_logprobs(self, upstream: str, model: str) -> bool | None:
        if self._logprobs_fixed is not None:
            return self._logprobs_fixed
        return self._logprobs_ok.get((upstream, model))

    def _detected(self, key: LogprobsKey, ok: bool) -> None:
        remember(self._logprobs_ok, key, ok)
        self.on_logprobs_detected(key, ok)

    # -- the queue (event loop only) --------------------------------------------------------------
    def full(self) -> bool:
        return self._queue.full()

    def submit(self, job: Job) -> bool:
        """Queue a finished primary without waiting; False when the queue is full."""
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            return False
        return True

    def queue_depth(self) -> int:
        return self._queue.qsize()

    def pending(self) -> int:
        return self._queue.qsize() + self.busy

    async def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._worker(), name=f"tbg-shadow-worker-{i}")
            for i in range(self._config.max_concurrent)
        ]

    async def stop(self) -> None:
        """Cancel the workers (a trial in progress counts as failed), then account for the jobs
        still queued: sampled, never replayed (`shutdown`)."""
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers = []
        while not self._queue.empty():
            self._agg.drop(self._queue.get_nowait().key, "shutdown")

    async def _worker(self) -> None:
        while True:
            job = await self._queue.get()
            self.busy += 1
            try:
                await self._process(job)
            except asyncio.CancelledError:
                self._agg.count(job.key, "failed")
                raise
            except Exception:  # a bug here must cost one trial, never the worker
                log.exception("shadow trial failed")  # with its stack (proxy.logs)
                self._agg.count(job.key, "failed")
                self._agg.on_internal_error()
            finally:
                self.busy -= 1

    async def _process(self, job: Job) -> None:
        exchange = job.exchange
        request = exchange.request
        try:
            primary = _primary_run(exchange)
        except (BuildError, orjson.JSONDecodeError, ValueError) as exc:
            log.info("primary not comparable: %s", type(exc).__name__)
            self._agg.drop(job.key, "primary_incomplete")
            return
        prompt_tokens, completion_tokens = _usage_tokens(exchange)
        # An empty primary (EOS first) is still worth one token of replay: a replay that does not
        # stop at once is a divergence at position 0.
        length = max(1, completion_tokens if completion_tokens is not None else len(primary.tokens))
        cost = self._config.replays * (length + (prompt_tokens or 0))
        if not self._sampler.spend_tokens(request.model_name, cost):
            self._agg.drop(job.key, "budget")
            return
        replays: list[Run] = []
        loads = [job.load_at_start]
        for _ in range(self._config.replays):
            delay = self._sampler.delay()
            if delay > 0:
                await asyncio.sleep(delay)
            result = await self._replay(request, length)
            if result is not None:
                run, load = result
                replays.append(run)
                loads.append(load)
        if not replays:
            self._agg.count(job.key, "failed")
            return
        await self._agg.fold(request, comparable_runs((primary, *replays)), max(loads))

    async def _replay(
        self, request: RequestInfo, length: int, logprobs: bool | None = None
    ) -> tuple[Run, int] | None:
        upstream = request.upstream
        key = (upstream, request.model_name)
        lkey = logprobs_key(request)
        detecting = self._logprobs_fixed is None and lkey not in self._logprobs_ok
        ask_logprobs = self.supports_logprobs(*lkey) is not False if logprobs is None else logprobs
        body = replay_body(
            request.route,
            request.body,
            max_tokens=length,
            logprobs_k=self._config.top_logprobs if ask_logprobs else None,
        )
        load = await self._load.acquire(upstream)
        try:
            status, payload = await self._transport.post_json(
                upstream,
                ROUTE_PATHS[request.route],
                body,
                request.headers,
                self._config.replay_timeout_seconds,
            )
        except Exception as exc:  # refused, reset, timeout: a failed replay, never the client's
            log.warning("replay to %s failed: %s", upstream, type(exc).__name__, exc_info=exc)
            self._agg.replay_request(key, "error")
            return None
        finally:
            self._load.release(upstream)
        if status != 200 and ask_logprobs and detecting:
            # Refused (400) or failed (500, ...) asking for logprobs: try once without. If that
            # works, this upstream and model do not do logprobs: ask without from now on.
            result = await self._replay(request, length, logprobs=False)
            if result is not None:
                self._detected(lkey, False)
            return result
        if status != 200:
            self._agg.replay_request(key, "error")
            return None
        try:
            data = orjson.loads(payload)
            build = (
                run_from_chat_response if request.route == "chat" else run_from_completion_response
            )
            run = build(data)
        except (orjson.JSONDecodeError, BuildError, ValueError, AttributeError):
            self._agg.replay_request(key, "error")
            return None
        if ask_logprobs and detecting:
            self._detected(lkey, run.top_logprobs is not None)
        usage = data.get("usage") if isinstance(data, dict) else None
        tokens = usage.get("total_tokens", 0) if isinstance(usage, dict) else 0
        self._agg.replay_request(key, "ok", tokens if isinstance(tokens, int) else 0)
        return run, load
