"""The canary book: what the canary trials showed, per (fleet upstream, canary upstream, model),
kept apart from the fleet's own estimators. Owned by the Aggregator (event loop only); readers get
immutable `CanaryEntry` values inside the published ShadowView.

Memory is bounded: keys are configured (upstream, model) pairs with a configured canary, each
holding one online estimator, fixed histograms and the last RECENT trials' positions and latencies
(for medians).
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from estimator.cross import wilson_interval
from estimator.decision_rates import DecisionSums
from estimator.decisions import DecisionTally
from estimator.online import (
    OnlineConfig,
    OnlineEstimator,
    OnlineSnapshot,
    SufficientStats,
    TrialComparison,
)
from proxy.shadow.canary import CrossResult
from proxy.shadow.canary_config import CanaryPolicy
from proxy.shadow.view import POSITION_BOUNDS, Key

CanaryKey = tuple[str, str, str]  # (fleet upstream, canary upstream, model_name)
# Latency histogram bounds, seconds (primary and canary replay of the same request).
LATENCY_BOUNDS: tuple[float, ...] = (
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0, float("inf"),
)  # fmt: skip
RECENT = 1024  # trials whose positions and latencies the medians read


def _bucket(bounds: tuple[float, ...], value: float) -> int:
    for i, bound in enumerate(bounds):
        if value <= bound:
            return i
    return len(bounds) - 1


def _median(values: Iterable[float]) -> float:
    data = list(values)
    return statistics.median(data) if data else float("nan")


@dataclass(frozen=True, slots=True)
class CanaryEntry:
    """One (fleet, canary, model) as published: immutable, safe in a rendering thread."""

    key: CanaryKey
    share: float
    snapshot: OnlineSnapshot  # the canary's T_bg, from its replays compared with each other
    stats: SufficientStats  # the same, undecayed (Prometheus counters)
    trials: int  # canary trials
    moved_trials: int  # trials whose first canary answer differs from the primary
    cross_pairs: int  # (primary, canary replay) pairs
    cross_moved: int  # of them, diverged
    position_counts: tuple[int, ...]  # first-divergence positions per POSITION_BOUNDS bucket
    position_sum: int
    position_median: float  # of the last RECENT trials' moved pairs
    primary_counts: tuple[int, ...]  # primary latency per LATENCY_BOUNDS bucket
    primary_sum: float
    canary_counts: tuple[int, ...]  # canary replay latency per LATENCY_BOUNDS bucket
    canary_sum: float
    canary_replays: int  # canary replays answered
    primary_median: float
    canary_median: float  # of each trial's mean replay latency
    ratio_median: float  # of each trial's canary / primary latency
    last_update: float
    # the canary replays' decisions against the fleet primary's (tools/json trials)
    decisions: DecisionSums = field(default_factory=DecisionSums)

    def moved_interval(self, level: float = 0.95) -> tuple[float, float]:
        """Wilson interval of the share of prompts whose answer the canary moves."""
        return wilson_interval(self.moved_trials, self.trials, level)

    @property
    def moved_rate(self) -> float:
        return self.moved_trials / self.trials if self.trials else float("nan")


@dataclass
class _Book:
    estimator: OnlineEstimator
    trials: int = 0
    moved_trials: int = 0
    cross_pairs: int = 0
    cross_moved: int = 0
    canary_replays: int = 0
    positions: list[int] = field(default_factory=lambda: [0] * len(POSITION_BOUNDS))
    position_sum: int = 0
    primary: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BOUNDS))
    primary_sum: float = 0.0
    canary: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BOUNDS))
    canary_sum: float = 0.0
    recent_positions: deque[int] = field(default_factory=lambda: deque(maxlen=RECENT))
    recent_latency: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=RECENT))
    last_update: float = 0.0
    decisions: DecisionSums = field(default_factory=DecisionSums)


class CanaryBook:
    """The Aggregator's canary state: `prime`, `fold` (a canary trial), `publish`."""

    def __init__(
        self,
        canaries: Mapping[str, CanaryPolicy],
        online: OnlineConfig,
        max_fields: int = 16,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._canaries = dict(canaries)
        self._max_fields = max_fields
        self._online = online
        self._clock = clock
        self._books: dict[CanaryKey, _Book] = {}

    @property
    def active(self) -> bool:
        return bool(self._canaries)

    def _book(self, key: CanaryKey) -> _Book:
        book = self._books.get(key)
        if book is None:
            book = self._books[key] = _Book(OnlineEstimator(self._online))
        return book

    def prime(self, keys: Iterable[Key]) -> None:
        """Every (fleet upstream, model) with a canary gets its series at 0 from the start."""
        for upstream, model in keys:
            policy = self._canaries.get(model)
            if policy is not None and policy.upstream != upstream:
                self._book((upstream, policy.upstream, model))

    def fold(
        self,
        key: Key,
        cross: CrossResult,
        own: TrialComparison,
        decisions: DecisionTally | None = None,
    ) -> None:
        """One canary trial of the fleet's `key`: its cross result, `own`, the comparison of its
        replays together (folded for the canary's T_bg when it has a pair), and `decisions`, its
        replays' decisions against the fleet primary's (a tools/json trial)."""
        book = self._book((key[0], cross.canary, key[1]))
        if own.pairs:
            book.estimator.add(own)
        book.trials += 1
        book.moved_trials += int(cross.first_moved)
        book.cross_pairs += cross.replays
        book.cross_moved += cross.moved
        book.canary_replays += cross.replays
        for pos in cross.first_divergences:
            book.positions[_bucket(POSITION_BOUNDS, pos)] += 1
            book.position_sum += pos
            book.recent_positions.append(pos)
        book.primary[_bucket(LATENCY_BOUNDS, cross.primary_seconds)] += 1
        book.primary_sum += cross.primary_seconds
        for s in cross.replay_seconds:
            book.canary[_bucket(LATENCY_BOUNDS, s)] += 1
            book.canary_sum += s
        if cross.replay_seconds:
            mean = sum(cross.replay_seconds) / len(cross.replay_seconds)
            book.recent_latency.append((cross.primary_seconds, mean))
        if decisions is not None:
            book.decisions = book.decisions.fold(decisions, self._max_fields)
        book.last_update = self._clock()

    def publish(self) -> tuple[CanaryEntry, ...]:
        out = []
        for key, book in self._books.items():
            latency = list(book.recent_latency)
            ratios = [c / p for p, c in latency if p > 0]
            policy = self._canaries.get(key[2])
            out.append(
                CanaryEntry(
                    key=key,
                    share=policy.share if policy is not None else 0.0,
                    snapshot=book.estimator.snapshot(),
                    stats=book.estimator.stats(),
                    trials=book.trials,
                    moved_trials=book.moved_trials,
                    cross_pairs=book.cross_pairs,
                    cross_moved=book.cross_moved,
                    position_counts=tuple(book.positions),
                    position_sum=book.position_sum,
                    position_median=_median(book.recent_positions),
                    primary_counts=tuple(book.primary),
                    primary_sum=book.primary_sum,
                    canary_counts=tuple(book.canary),
                    canary_sum=book.canary_sum,
                    canary_replays=book.canary_replays,
                    primary_median=_median(p for p, _ in latency),
                    canary_median=_median(c for _, c in latency),
                    ratio_median=_median(ratios),
                    last_update=book.last_update,
                    decisions=book.decisions,
                )
            )
        return tuple(out)
