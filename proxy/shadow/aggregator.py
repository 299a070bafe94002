"""The Aggregator stage: the only writer of the shadow estimates and counters, and their publisher.

It counts what the Tap reports (eligible, sampled, the Tap's own drops) and applies the Outcomes
the Worker sends back (proxy.shadow.messages): replay requests, comparisons folded into the online
estimators, drops, failures, and the logprobs capability the Tap reads before augmenting. Readers
never touch that mutable state: after a change the Aggregator publishes an immutable ShadowView (at
most once per `publish_interval_s`) and renders its Prometheus exposition in a worker thread, so a
scrape costs a bytes copy, not a profile likelihood and 10,000 formatted samples on the event loop.

What marks the view changed is a sampled primary or an outcome, not the eligible count the hot path
bumps for every greedy request: that count reaches the view with the next change, and at least
every `eligible_refresh_s` while it moves (the starvation alert reads its rate over 30 minutes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import replace

from estimator.model import TrialContext
from proxy.shadow.canary_state import CanaryBook
from proxy.shadow.capability import Capabilities
from proxy.shadow.config import ShadowConfig
from proxy.shadow.coverage import Coverage
from proxy.shadow.decisions_state import DecisionsState
from proxy.shadow.fingerprints import FingerprintTracker
from proxy.shadow.load import LOAD_BUCKETS
from proxy.shadow.messages import (
    Compared,
    Dropped,
    Failed,
    InternalError,
    LogprobsLearned,
    ReplayDone,
)
from proxy.shadow.seeded import SeededReproducibility
from proxy.shadow.state import ShadowState, online_config
from proxy.shadow.view import Key, ShadowView

log = logging.getLogger("tbg.shadow")

Render = Callable[[ShadowView], bytes]


class Aggregator:
    def __init__(
        self,
        config: ShadowConfig,
        *,
        render: Render | None = None,
        publish_interval_s: float = 1.0,
        eligible_refresh_s: float = 10.0,
    ) -> None:
        self._config = config
        self._state = ShadowState(online_config(config), config.exemplars)
        self._state.decisions = DecisionsState(config.decision_fields)
        self._render = render
        # Request hashes are keyed per process: stable within it, useless for guessing prompts.
        self._hash_key = os.urandom(16)
        self._interval = publish_interval_s
        self._eligible_refresh = eligible_refresh_s
        self._version = 0
        self._view = self._state.publish(0)
        self._exposition = b""
        self._rendered_version = -1
        self._changed = asyncio.Event()
        self._publisher: asyncio.Task[None] | None = None
        self._capabilities = Capabilities(config)
        # Counts a bug in the shadow path (tbg_internal_errors_total{where="shadow"}); set by wiring.
        self.on_internal_error: Callable[[], None] = lambda: None
        # Canary trials (proxy.shadow.canary) are filed here, never in the fleet's estimators.
        self._canary = CanaryBook(config.canary, online_config(config), config.decision_fields)
        # Every tapped request by outcome, and the seeded trials kept apart from T_bg.
        self.coverage = Coverage()
        self._seeded = SeededReproducibility(online_config(config))
        self._seeded_decisions = DecisionsState(config.decision_fields)  # never the greedy ones
        # Backend fingerprints per key: changes, and T_bg per fingerprint epoch.
        self._fingerprints = FingerprintTracker(online_config(config))

    # -- writers (event loop only) --------------------------------------------------------------
    def prime(self, keys: Iterable[Key]) -> None:
        """Export every (upstream, model_name) series the configuration can produce, at 0."""
        keys = tuple(keys)
        for key in keys:
            self._state.prime(key, LOAD_BUCKETS)
        self._canary.prime(keys)
        self._changed.set()

    def count_eligible(self, key: Key) -> None:
        """Hot path, every greedy request: one dict increment, the view is not marked changed."""
        self._state.count_eligible(key)

    def sampled(self, key: Key) -> None:
        self._state.count(key, "sampled")
        self._changed.set()

    def apply(
        self, outcome: Dropped | Failed | ReplayDone | LogprobsLearned | InternalError
    ) -> None:
        """Count one outcome of a sampled primary (from the Tap or the Worker)."""
        if isinstance(outcome, ReplayDone):
            if outcome.outcome is None:
                return  # an attempt sent again: not a replay request
            self._state.replay_request(outcome.key, outcome.outcome, outcome.tokens)
        elif isinstance(outcome, Dropped):
            self._state.drop(outcome.key, outcome.reason)
        elif isinstance(outcome, Failed):
            self._state.count(outcome.key, "failed")
        elif isinstance(outcome, LogprobsLearned):
            self._capabilities.learn((outcome.upstream, outcome.model), outcome.supported)
            return  # not part of the view
        elif isinstance(outcome, InternalError):
            self.on_internal_error()
            return
        self._changed.set()

    def fold(self, compared: Compared, bucket: str) -> None:
        """Fold a trial compared by the Worker into the overall, the `bucket` (the bucket of the
        largest load its primary and replays met, which only the proxy knows) and its request
        class's estimators. A seeded trial goes to the seeded report instead, never into T_bg."""
        if compared.cross is not None:  # a canary trial: the canary book only, never the fleet's
            self._canary.fold(compared.key, compared.cross, compared.comparison, compared.decisions)
            # measured (on the canary): it ends the trial's accounting like any compared one
            self.coverage.compared(compared.key, "greedy", compared.comparison)
            self._state.count(compared.key, "replayed")
            self._changed.set()
            return
        if compared.request_class is not None and compared.request_class.decoding == "seeded":
            self._fold_seeded(compared)
            return
        self.coverage.compared(compared.key, "greedy", compared.comparison)
        upstream, model = compared.key
        ctx = TrialContext(upstream, model, bucket)
        self._state.record_comparison(ctx, compared.comparison, compared.request_class)
        self._state.count(compared.key, "replayed")
        if compared.decisions is not None:
            self._state.decisions.fold(compared.key, compared.request_class, compared.decisions)
        for exemplar in compared.exemplars:
            self._state.add_exemplar(replace(exemplar, load_bucket=bucket))
        self._fingerprints.observe(compared.key, compared.fingerprint, compared.comparison)
        self._changed.set()

    def _fold_seeded(self, compared: Compared) -> None:
        self._seeded.add(compared.key, compared.comparison, compared.request_class)
        if compared.decisions is not None:
            self._seeded_decisions.fold(compared.key, compared.request_class, compared.decisions)
        self.coverage.compared(compared.key, "seeded", compared.comparison)
        self._state.count(compared.key, "replayed")
        self._changed.set()

    # -- readers --------------------------------------------------------------------------------
    def supports_logprobs(self, upstream: str, model: str) -> bool | None:
        """What the replays learned (or the config fixes) of this upstream and model."""
        return self._capabilities.logprobs((upstream, model))

    @property
    def hash_key(self) -> bytes:
        """The per-process key of request hashes (the shadow worker process hashes with it too)."""
        return self._hash_key

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
        if self._canary.active:
            self._view = replace(self._view, canary=self._canary.publish())
        self._view = replace(self._view, measured=self.coverage.publish(),
                             seeded=replace(self._seeded.publish(),
                                            decisions=self._seeded_decisions.publish()))  # fmt: skip
        self._view = replace(self._view, fingerprints=self._fingerprints.publish())
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
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self._eligible_refresh)
            if (
                not self._changed.is_set()
                and self._state.eligible == self._view.eligible
                and self.coverage.changes == self._view.measured.changes
            ):
                continue  # nothing new, not even an eligible (or an ineligible) request
            try:
                await self._render_view(self.publish())
            except Exception:  # a rendering bug must not stop publication for good
                log.exception("shadow view publication failed")
                self.on_internal_error()
            await asyncio.sleep(self._interval)
