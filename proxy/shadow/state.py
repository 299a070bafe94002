"""What the shadow path knows: online estimators per (upstream, model_name), per load bucket and
per request class, additive counters for Prometheus, replay accounting and the last divergence
exemplars.

Owned by the Aggregator and mutated from the event loop only; nothing reads it directly: readers get
an immutable ShadowView from `publish`. Memory is bounded: keys are (configured upstream, bounded
model_name, one of 7 load buckets or one of 12 request classes) and the exemplars live in a
fixed-size deque.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import numpy as np

from estimator.model import TrialContext
from estimator.online import (
    OnlineConfig,
    OnlineEstimator,
    TrialComparison,
)
from proxy.shadow.classes import RequestClass
from proxy.shadow.config import ShadowConfig
from proxy.shadow.decisions_state import DecisionsState
from proxy.shadow.view import (
    ACCOUNTING_FIELDS,
    DROP_REASONS,
    POSITION_BOUNDS,
    ClassKey,
    Exemplar,
    Key,
    LoadKey,
    ShadowView,
    frozen,
)


def online_config(config: ShadowConfig) -> OnlineConfig:
    """The online estimators' settings for a shadow configuration (the grid is the default one)."""
    return OnlineConfig(half_life_trials=config.half_life_trials)


class ShadowState:
    def __init__(self, online: OnlineConfig, exemplar_limit: int, clock: Any = time.time) -> None:
        self.online = online
        self.grid: np.ndarray = online.grid
        self._clock = clock
        self._overall: dict[Key, OnlineEstimator] = {}
        self._by_load: dict[LoadKey, OnlineEstimator] = {}
        # Bounded: the class set is fixed (proxy.shadow.classes), 2 routes x 3 kinds x 2 streaming
        # = 12 at most per (upstream, model_name); created by the first comparison of a class.
        self._by_class: dict[ClassKey, OnlineEstimator] = {}
        self._positions: dict[Key, list[int]] = {}
        self._position_sums: dict[Key, int] = {}
        self._last_update: dict[Key, float] = {}
        self.accounting: dict[LoadKey, int] = {}
        self.dropped: dict[LoadKey, int] = {}
        self.replay_requests: dict[LoadKey, int] = {}
        self.replay_tokens: dict[Key, int] = {}
        self.eligible: dict[Key, int] = {}  # greedy primaries seen, sampled or not
        self.exemplars: deque[Exemplar] = deque(maxlen=max(exemplar_limit, 0))
        self.decisions = DecisionsState()  # the Aggregator sets its field limit

    def prime(self, key: Key, buckets: tuple[str, ...]) -> None:
        """Create a key's counter series at 0 before any traffic: Prometheus' increase() cannot
        count the first value of a series that is born already holding it."""
        self._ensure(key)
        for bucket in buckets:
            lkey = (key[0], key[1], bucket)
            if lkey not in self._by_load:
                self._by_load[lkey] = OnlineEstimator(self.online)

    # -- accounting -----------------------------------------------------------------------------
    def _ensure(self, key: Key) -> None:
        """Every accounting series exists from a key's first sample on, at 0, so that rate() and
        increase() see the first increments too."""
        if (key[0], key[1], "sampled") in self.accounting:
            return
        for what in ACCOUNTING_FIELDS:
            self.accounting[(key[0], key[1], what)] = 0
        for reason in DROP_REASONS:
            self.dropped[(key[0], key[1], reason)] = 0
        for outcome in ("ok", "error"):
            self.replay_requests[(key[0], key[1], outcome)] = 0
        self.replay_tokens.setdefault(key, 0)

    def count_eligible(self, key: Key) -> None:
        self.eligible[key] = self.eligible.get(key, 0) + 1

    def count(self, key: Key, what: str, n: int = 1) -> None:
        self._ensure(key)
        k = (key[0], key[1], what)
        self.accounting[k] = self.accounting.get(k, 0) + n

    def drop(self, key: Key, reason: str) -> None:
        self._ensure(key)
        k = (key[0], key[1], reason)
        self.dropped[k] = self.dropped.get(k, 0) + 1

    def replay_request(self, key: Key, outcome: str, tokens: int = 0) -> None:
        self._ensure(key)
        k = (key[0], key[1], outcome)
        self.replay_requests[k] = self.replay_requests.get(k, 0) + 1
        if tokens:
            self.replay_tokens[key] = self.replay_tokens.get(key, 0) + tokens

    # -- estimates ------------------------------------------------------------------------------
    def record_comparison(
        self,
        ctx: TrialContext,
        comparison: TrialComparison,
        request_class: RequestClass | None = None,
    ) -> None:
        key = (ctx.upstream, ctx.model_name)
        lkey = (ctx.upstream, ctx.model_name, ctx.load_bucket)
        overall = self._overall.get(key)
        if overall is None:
            overall = self._overall[key] = OnlineEstimator(self.online)
        by_load = self._by_load.get(lkey)
        if by_load is None:
            by_load = self._by_load[lkey] = OnlineEstimator(self.online)
        overall.add(comparison)
        by_load.add(comparison)
        if request_class is not None:
            ckey = (ctx.upstream, ctx.model_name, request_class)
            by_class = self._by_class.get(ckey)
            if by_class is None:
                by_class = self._by_class[ckey] = OnlineEstimator(self.online)
            by_class.add(comparison)
        self._positions.setdefault(key, [0] * len(POSITION_BOUNDS))
        self._position_sums[key] = self._position_sums.get(key, 0) + sum(
            comparison.first_divergences
        )
        for pos in comparison.first_divergences:
            for i, bound in enumerate(POSITION_BOUNDS):
                if pos <= bound:
                    self._positions[key][i] += 1
                    break
        self._last_update[key] = self._clock()

    def add_exemplar(self, exemplar: Exemplar) -> None:
        self.exemplars.append(exemplar)

    def publish(self, version: int) -> ShadowView:
        """An immutable copy of everything (snapshots are cached per estimator until it changes)."""
        by_load = []
        for lkey, est in self._by_load.items():
            snap = est.snapshot()
            if snap.pairs:
                by_load.append((lkey, snap))
        return ShadowView(
            version=version,
            published_at=self._clock(),
            estimates=tuple(
                (key, est.snapshot(), self._last_update.get(key, 0.0))
                for key, est in self._overall.items()
            ),
            by_load=tuple(by_load),
            stats=tuple((lkey, est.stats()) for lkey, est in self._by_load.items()),
            position_counts=tuple(
                (key, tuple(counts), self._position_sums.get(key, 0))
                for key, counts in self._positions.items()
            ),
            accounting=frozen(self.accounting),
            dropped=frozen(self.dropped),
            replay_requests=frozen(self.replay_requests),
            replay_tokens=frozen(self.replay_tokens),
            eligible=frozen(self.eligible),
            exemplars=tuple(self.exemplars),
            by_class=tuple((ckey, est.snapshot()) for ckey, est in self._by_class.items()),
            decisions=self.decisions.publish(),
        )
