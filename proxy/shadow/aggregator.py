"""The Aggregator: the only writer of the shadow estimates and counters, and their publisher.

It folds each finished trial (primary + replays) into the online estimators and counts what the
sampler and the replayer report. Readers never touch that mutable state: after a change the
Aggregator publishes an immutable ShadowView (at most once per `publish_interval_s`) and renders its
Prometheus exposition in a worker thread, so a scrape costs a bytes copy, not a profile likelihood
and 10,000 formatted samples on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from estimator.model import Run, Trial, TrialContext
from estimator.online import OnlineConfig, TrialComparison
from proxy.shadow.config import ShadowConfig
from proxy.shadow.load import LOAD_BUCKETS, load_bucket
from proxy.shadow.state import ShadowState
from proxy.shadow.view import Exemplar, Key, ShadowView
from proxy.tap import RequestInfo

log = logging.getLogger("tbg.shadow")

Render = Callable[[ShadowView], bytes]


@dataclass(frozen=True, slots=True)
class Compared:
    """One trial, compared: all the Aggregator needs to fold it (small and picklable)."""

    context: TrialContext
    comparison: TrialComparison
    exemplars: tuple[Exemplar, ...]


def compare_trial(
    compare: Callable[[Trial], TrialComparison],
    config: ShadowConfig,
    hash_key: bytes,
    request: RequestInfo,
    runs: tuple[Run, ...],
    load: int,
) -> Compared:
    """Compare one trial and pick its exemplars; touches no state (safe in a thread or process)."""
    digest = hashlib.blake2b(request.raw_body, key=hash_key, digest_size=8).hexdigest()
    context = TrialContext(request.upstream, request.model_name, load_bucket(load))
    comparison = compare(Trial(digest, runs, context))
    now = time.time()
    seen: set[tuple[int, str, str]] = set()
    exemplars: list[Exemplar] = []
    for div in comparison.exemplars:
        # One exemplar per distinct split: with k replays the same fork shows up in many pairs.
        low, high = sorted((div.token_a, div.token_b))
        split = (div.position, low, high)
        if split in seen:
            continue
        seen.add(split)
        text = None
        if config.record_text:
            text = {
                "input": request.body.get("messages", request.body.get("prompt")),
                "run_a": runs[div.run_a].text,
                "run_b": runs[div.run_b].text,
            }
        exemplars.append(
            Exemplar(now, request.upstream, request.model_name, context.load_bucket, digest,
                     div.position, div.token_a, div.token_b, div.logprob_a, div.logprob_b, text)
        )  # fmt: skip
    return Compared(context, comparison, tuple(exemplars))


def online_config(config: ShadowConfig) -> OnlineConfig:
    """The online estimators' settings for a shadow configuration (the grid is the default one)."""
    return OnlineConfig(half_life_trials=config.half_life_trials)


class Aggregator:
    def __init__(
        self,
        config: ShadowConfig,
        *,
        render: Render | None = None,
        hash_key: bytes | None = None,
        publish_interval_s: float = 1.0,
    ) -> None:
        self._config = config
        self._state = ShadowState(online_config(config), config.exemplars)
        self._render = render
        # Request hashes are keyed per process: stable within it, useless for guessing prompts.
        self._hash_key = hash_key or os.urandom(16)
        self._interval = publish_interval_s
        self._version = 0
        self._view = self._state.publish(0)
        self._exposition = b""
        self._rendered_version = -1
        self._changed = asyncio.Event()
        self._publisher: asyncio.Task[None] | None = None
        # Counts a bug in the shadow path (tbg_internal_errors_total{where="shadow"}); set by wiring.
        self.on_internal_error: Callable[[], None] = lambda: None

    # -- writers (event loop only) --------------------------------------------------------------
    def prime(self, keys: Iterable[Key]) -> None:
        """Export every (upstream, model_name) series the configuration can produce, at 0."""
        for key in keys:
            self._state.prime(key, LOAD_BUCKETS)
        self._touch()

    def count_eligible(self, key: Key) -> None:
        self._state.count_eligible(key)
        self._touch()

    def count(self, key: Key, what: str) -> None:
        self._state.count(key, what)
        self._touch()

    def drop(self, key: Key, reason: str) -> None:
        self._state.drop(key, reason)
        self._touch()

    def replay_request(self, key: Key, outcome: str, tokens: int = 0) -> None:
        self._state.replay_request(key, outcome, tokens)
        self._touch()

    async def fold(self, request: RequestInfo, runs: tuple[Run, ...], load: int) -> None:
        """Compare one trial (in a worker thread: the trie and the grid likelihood are the heavy
        part) and fold it into the overall and per-load-bucket estimators."""
        compared = await asyncio.to_thread(
            compare_trial, self._state.compare, self._config, self._hash_key, request, runs, load
        )
        self.record(compared)

    def record(self, compared: Compared) -> None:
        """Fold a trial compared elsewhere (a worker thread or the shadow worker process)."""
        self._state.record_comparison(compared.context, compared.comparison)
        self._state.count((compared.context.upstream, compared.context.model_name), "replayed")
        for exemplar in compared.exemplars:
            self._state.add_exemplar(exemplar)
        self._touch()

    def _touch(self) -> None:
        self._changed.set()

    @property
    def hash_key(self) -> bytes:
        """The per-process key of request hashes (the shadow worker process hashes with it too)."""
        return self._hash_key

    # -- readers --------------------------------------------------------------------------------
    @property
    def view(self) -> ShadowView:
        """The last published view (at most `publish_interval_s` behind once the publisher runs)."""
        return self._view

    def exposition(self) -> bytes:
        """The Prometheus text of the last rendered view (the publisher keeps it current)."""
        return self._exposition

    def publish(self) -> ShadowView:
        """Publish a view of the current state now (cheap: snapshots are cached per estimator)."""
        self._changed.clear()
        self._version += 1
        self._view = self._state.publish(self._version)
        return self._view

    def render_now(self) -> bytes:
        """Publish and render on the calling thread (tools and tests without a running loop)."""
        return self._render(self.publish()) if self._render is not None else b""

    async def flush(self) -> ShadowView:
        """Publish and render now: used at start (primed zeros before the first scrape), when the
        shadow path goes idle (tests, the demo) and at shutdown."""
        view = self.publish()
        await self._render_view(view)
        return view

    async def _render_view(self, view: ShadowView) -> None:
        if self._render is None or view.version <= self._rendered_version:
            return
        body = await asyncio.to_thread(self._render, view)
        if (
            view.version > self._rendered_version
        ):  # a concurrent flush may have rendered a newer one
            self._exposition, self._rendered_version = body, view.version

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.flush()
        self._publisher = asyncio.create_task(self._publish_loop(), name="tbg-shadow-publisher")

    async def stop(self) -> None:
        if self._publisher is not None:
            self._publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher
            self._publisher = None
        await self.flush()

    async def _publish_loop(self) -> None:
        while True:
            await self._changed.wait()
            try:
                await self._render_view(self.publish())
            except Exception:  # a rendering bug must not stop publication for good
                log.exception("shadow view publication failed")
                self.on_internal_error()
            await asyncio.sleep(self._interval)
