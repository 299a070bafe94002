"""ShadowTap: the shadow path. Samples greedy primaries (proxy.tap.Tap), queues finished ones,
replays them off the hot path, and feeds primary + replays to the online estimators.

Hot-path cost: `plan` is a dict lookup, a coin flip and, for sampled requests only, a token-bucket
check and (with augment_logprobs) one orjson.dumps; `complete` is a put_nowait. Everything else runs
in `max_concurrent` owned worker tasks. Accounting per sampled primary, exact once idle:
sampled = replayed + dropped + failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping
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
from estimator.model import Run, Trial, TrialContext
from estimator.online import OnlineConfig
from proxy.shadow.config import ShadowConfig
from proxy.shadow.load import LOAD_BUCKETS, InFlightProbe, LoadTracker, MetricsFetcher, load_bucket
from proxy.shadow.sampling import Sampler
from proxy.shadow.state import Exemplar, Key, ShadowState
from proxy.shadow.wire import (
    augmented_upstream_body,
    client_wants_logprobs,
    is_greedy,
    replay_body,
    strip_logprobs,
)
from proxy.tap import Exchange, RequestInfo, TapPlan

log = logging.getLogger("tbg.shadow")

ROUTE_PATHS: Mapping[str, str] = {"chat": "/chat/completions", "completions": "/completions"}


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


@dataclass(frozen=True, slots=True)
class _Ticket:
    """Carried from plan() to complete() inside TapPlan.token."""

    key: Key
    load_at_start: int
    augmented: bool


@dataclass(frozen=True, slots=True)
class _Job:
    exchange: Exchange
    ticket: _Ticket


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


class ShadowTap:
    """Implements proxy.tap.Tap; `start()` spawns the workers, `stop()` cancels and awaits them."""

    def __init__(
        self,
        config: ShadowConfig,
        transport: ReplayTransport,
        in_flight: InFlightProbe,
        *,
        rng: random.Random | None = None,
        hash_key: bytes | None = None,
    ) -> None:
        self.config = config
        self._transport = transport
        self._rng = rng or random.Random()
        self.sampler = Sampler(config, rng=self._rng)
        self.load = LoadTracker(in_flight)
        # Counts a bug in the shadow path (tbg_internal_errors_total{where="shadow"}); set by wiring.
        self.on_internal_error: Callable[[], None] = lambda: None
        online = OnlineConfig(half_life_trials=config.half_life_trials)
        self.state = ShadowState(online, config.exemplars)
        # Request hashes are keyed per process: stable within it, useless for guessing prompts.
        self._hash_key = hash_key or os.urandom(16)
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=config.queue_size)
        self._workers: list[asyncio.Task[None]] = []
        self._busy = 0
        # Per upstream: absent = unknown (config "auto"); True once a replay came back with
        # logprobs; False once it did not. "yes"/"no" in the config fix it for every upstream.
        self._logprobs_ok: dict[str, bool] = {}
        self._logprobs_fixed = {"yes": True, "no": False}.get(config.logprobs)

    # -- lifecycle ------------------------------------------------------------------------------
    def prime(self, keys: Iterable[Key]) -> None:
        """Export every (upstream, model_name) series the configuration can produce, at 0."""
        for key in keys:
            self.state.prime(key, LOAD_BUCKETS)

    async def start(self, upstreams_for_polling: tuple[str, ...] = ()) -> None:
        self._workers = [
            asyncio.create_task(self._worker(), name=f"tbg-shadow-worker-{i}")
            for i in range(self.config.max_concurrent)
        ]
        if self.config.load_source == "vllm_metrics" and upstreams_for_polling:
            self.load.start_polling(
                self._transport, upstreams_for_polling, self.config.load_poll_seconds
            )

    async def stop(self) -> None:
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers = []
        await self.load.stop()
        # Jobs still queued were sampled but will never be replayed: account for them.
        while not self._queue.empty():
            job = self._queue.get_nowait()
            self.state.drop(job.ticket.key, "shutdown")

    async def idle(self, within_s: float) -> bool:
        """Wait until the queue is empty and no worker is busy (tests, the demo). False if not
        idle within `within_s` seconds."""
        deadline = time.monotonic() + within_s
        while self._queue.qsize() or self._busy:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    def _supports_logprobs(self, upstream: str) -> bool | None:
        if self._logprobs_fixed is not None:
            return self._logprobs_fixed
        return self._logprobs_ok.get(upstream)

    def queue_depth(self) -> int:
        return self._queue.qsize()

    # -- hot path (proxy.tap.Tap) ---------------------------------------------------------------
    def plan(self, request: RequestInfo) -> TapPlan | None:
        if not is_greedy(request.route, request.body, self.config.eligibility):
            return None
        key = (request.upstream, request.model_name)
        self.state.count_eligible(key)
        decision = self.sampler.decide(request.model_name)
        if not decision.sampled:
            return None
        self.state.count(key, "sampled")
        if decision.dropped_reason is not None:
            self.state.drop(key, decision.dropped_reason)
            return None
        if self._queue.full():  # would be dropped at complete(); do not touch the request at all
            self.sampler.refund_rate(request.model_name)
            self.state.drop(key, "queue_full")
            return None
        # Augment only once a replay proved this upstream returns logprobs: an upstream that rejects
        # them must never turn a client's request into an error.
        augment = (
            self.config.augment_logprobs
            and self._supports_logprobs(request.upstream) is True
            and not client_wants_logprobs(request.route, request.body)
        )
        # plan() runs before the primary is counted in flight; a replay counts itself, so the
        # primary counts itself too (+1) for both to see the same load at the same batch size.
        ticket = _Ticket(key, self.load.current(request.upstream) + 1, augment)
        if not augment:
            return TapPlan(token=ticket)
        body = augmented_upstream_body(request.route, request.body, self.config.top_logprobs)
        if request.stream:
            return TapPlan(upstream_body=body, rewrite_event=strip_logprobs, token=ticket)
        return TapPlan(upstream_body=body, rewrite_body=strip_logprobs, token=ticket)

    def complete(self, exchange: Exchange) -> None:
        ticket = exchange.plan.token
        if not isinstance(ticket, _Ticket):
            return
        if exchange.status != 200 or not exchange.completed:
            log.info("primary not replayed: status %s, completed %s", exchange.status,
                     exchange.completed)  # fmt: skip
            self.sampler.refund_rate(exchange.request.model_name)
            self.state.drop(ticket.key, "primary_incomplete")
            return
        try:
            self._queue.put_nowait(_Job(exchange, ticket))
        except asyncio.QueueFull:
            self.sampler.refund_rate(exchange.request.model_name)
            self.state.drop(ticket.key, "queue_full")

    # -- shadow path ----------------------------------------------------------------------------
    async def _worker(self) -> None:
        while True:
            job = await self._queue.get()
            self._busy += 1
            try:
                await self._process(job)
            except asyncio.CancelledError:
                self.state.count(job.ticket.key, "failed")
                raise
            except Exception:  # a bug here must cost one trial, never the worker
                log.exception("shadow trial failed")  # with its stack (proxy.logs)
                self.state.count(job.ticket.key, "failed")
                self.on_internal_error()
            finally:
                self._busy -= 1

    async def _process(self, job: _Job) -> None:
        exchange, ticket = job.exchange, job.ticket
        request = exchange.request
        try:
            primary = _primary_run(exchange)
        except (BuildError, orjson.JSONDecodeError, ValueError) as exc:
            log.info("primary not comparable: %s", type(exc).__name__)
            self.state.drop(ticket.key, "primary_incomplete")
            return
        prompt_tokens, completion_tokens = _usage_tokens(exchange)
        # An empty primary (EOS first) is still worth one token of replay: a replay that does not
        # stop at once is a divergence at position 0.
        length = max(1, completion_tokens if completion_tokens is not None else len(primary.tokens))
        cost = self.config.replays * (length + (prompt_tokens or 0))
        if not self.sampler.spend_tokens(request.model_name, cost):
            self.state.drop(ticket.key, "budget")
            return
        replays: list[Run] = []
        loads = [ticket.load_at_start]
        for _ in range(self.config.replays):
            delay = self.sampler.delay()
            if delay > 0:
                await asyncio.sleep(delay)
            result = await self._replay(request, length)
            if result is not None:
                run, load = result
                replays.append(run)
                loads.append(load)
        if not replays:
            self.state.count(ticket.key, "failed")
            return
        await self._compare(request, primary, replays, max(loads))

    async def _replay(self, request: RequestInfo, length: int) -> tuple[Run, int] | None:
        upstream = request.upstream
        key = (upstream, request.model_name)
        ask_logprobs = self._supports_logprobs(upstream) is not False
        body = replay_body(
            request.route,
            request.body,
            max_tokens=length,
            logprobs_k=self.config.top_logprobs if ask_logprobs else None,
        )
        load = self.load.replay_started(upstream)
        try:
            status, payload = await self._transport.post_json(
                upstream,
                ROUTE_PATHS[request.route],
                body,
                request.headers,
                self.config.replay_timeout_seconds,
            )
        except Exception as exc:  # refused, reset, timeout: a failed replay, never the client's
            log.warning("replay to %s failed: %s", upstream, type(exc).__name__, exc_info=exc)
            self.state.replay_request(key, "error")
            return None
        finally:
            self.load.replay_finished(upstream)
        detecting = self._logprobs_fixed is None and upstream not in self._logprobs_ok
        if status == 400 and ask_logprobs and detecting:
            self._logprobs_ok[upstream] = False  # it rejects logprobs: ask without from now on
            return await self._replay(request, length)
        if status != 200:
            self.state.replay_request(key, "error")
            return None
        try:
            data = orjson.loads(payload)
            build = (
                run_from_chat_response if request.route == "chat" else run_from_completion_response
            )
            run = build(data)
        except (orjson.JSONDecodeError, BuildError, ValueError, AttributeError):
            self.state.replay_request(key, "error")
            return None
        if ask_logprobs and detecting:
            self._logprobs_ok[upstream] = run.top_logprobs is not None
        usage = data.get("usage") if isinstance(data, dict) else None
        tokens = usage.get("total_tokens", 0) if isinstance(usage, dict) else 0
        self.state.replay_request(key, "ok", tokens if isinstance(tokens, int) else 0)
        return run, load

    async def _compare(
        self, request: RequestInfo, primary: Run, replays: list[Run], load: int
    ) -> None:
        key = (request.upstream, request.model_name)
        digest = hashlib.blake2b(request.raw_body, key=self._hash_key, digest_size=8).hexdigest()
        context = TrialContext(request.upstream, request.model_name, load_bucket(load))
        runs = comparable_runs((primary, *replays))
        trial = Trial(digest, runs, context)
        # The comparison (trie, likelihood on the grid) is pure and the heavy part: it runs in a
        # worker thread so primaries keep the event loop; folding it into the state stays here.
        comparison = await asyncio.to_thread(self.state.compare, trial)
        self.state.record(trial, comparison)
        self.state.count(key, "replayed")
        now = time.time()
        seen: set[tuple[int, str, str]] = set()
        for div in comparison.exemplars:
            # One exemplar per distinct split: with k replays the same fork shows up in many pairs.
            low, high = sorted((div.token_a, div.token_b))
            split = (div.position, low, high)
            if split in seen:
                continue
            seen.add(split)
            text = None
            if self.config.record_text:
                text = {
                    "input": request.body.get("messages", request.body.get("prompt")),
                    "run_a": runs[div.run_a].text,
                    "run_b": runs[div.run_b].text,
                }
            self.state.add_exemplar(
                Exemplar(
                    now,
                    request.upstream,
                    request.model_name,
                    context.load_bucket,
                    digest,
                    div.position,
                    div.token_a,
                    div.token_b,
                    div.logprob_a,
                    div.logprob_b,
                    text,
                )
            )
