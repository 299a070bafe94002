"""What the shadow path knows: online estimators per (upstream, model_name) and per load bucket,
additive counters for Prometheus, replay accounting and the last divergence exemplars.

Owned by one ShadowTap; mutated from the event loop only, read at scrape time and by GET /tbg.
Memory is bounded: keys are (configured upstream, bounded model_name, one of 7 load buckets) and the
exemplars live in a fixed-size deque.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from estimator.model import Trial
from estimator.online import (
    OnlineConfig,
    OnlineEstimator,
    OnlineSnapshot,
    SufficientStats,
    TrialComparison,
)

# First-divergence position histogram (tokens); powers of two like the load buckets.
POSITION_BOUNDS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, float("inf"))
ACCOUNTING_FIELDS: tuple[str, ...] = ("sampled", "replayed", "failed")
DROP_REASONS: tuple[str, ...] = (
    "queue_full",
    "rate_limit",
    "budget",
    "primary_incomplete",
    "shutdown",  # sampled, still queued when the proxy stopped
)


@dataclass(frozen=True, slots=True)
class Exemplar:
    at: float  # unix time
    upstream: str
    model_name: str
    load_bucket: str
    request_hash: str
    position: int
    token_a: str
    token_b: str
    logprob_a: float | None
    logprob_b: float | None
    text: dict[str, Any] | None  # only with record_text: the input and the two continuations

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "at": self.at,
            "upstream": self.upstream,
            "model_name": self.model_name,
            "load_bucket": self.load_bucket,
            "request_hash": self.request_hash,
            "position": self.position,
            "token_a": self.token_a,
            "token_b": self.token_b,
            "logprob_a": self.logprob_a,
            "logprob_b": self.logprob_b,
        }
        if self.text is not None:
            out["text"] = self.text
        return out


Key = tuple[str, str]  # (upstream, model_name)


class ShadowState:
    def __init__(self, online: OnlineConfig, exemplar_limit: int, clock: Any = time.time) -> None:
        self.online = online
        self.grid: np.ndarray = online.grid
        self._clock = clock
        self._overall: dict[Key, OnlineEstimator] = {}
        self._by_load: dict[tuple[str, str, str], OnlineEstimator] = {}
        self._positions: dict[Key, list[int]] = {}
        self._position_sums: dict[Key, int] = {}
        self._last_update: dict[Key, float] = {}
        self.accounting: dict[tuple[str, str, str], int] = {}
        self.dropped: dict[tuple[str, str, str], int] = {}
        self.replay_requests: dict[tuple[str, str, str], int] = {}
        self.replay_tokens: dict[Key, int] = {}
        self.eligible: dict[Key, int] = {}  # greedy primaries seen, sampled or not
        self.exemplars: deque[Exemplar] = deque(maxlen=max(exemplar_limit, 0))
        self._comparer = OnlineEstimator(online)  # only its compare() is used: never updated

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

    def totals(self) -> dict[str, int]:
        """Accounting summed over keys: sampled == replayed + dropped + failed once idle."""
        out = {name: 0 for name in (*ACCOUNTING_FIELDS, "dropped")}
        for (_, _, what), n in self.accounting.items():
            out[what] = out.get(what, 0) + n
        out["dropped"] = sum(self.dropped.values())
        return out

    def drops_by_reason(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (_, _, reason), n in self.dropped.items():
            if n:
                out[reason] = out.get(reason, 0) + n
        return out

    # -- estimates ------------------------------------------------------------------------------
    def compare(self, trial: Trial) -> TrialComparison:
        """The comparison of one trial; touches no state (safe off the event loop)."""
        return self._comparer.compare(trial)

    def record(self, trial: Trial, comparison: TrialComparison | None = None) -> TrialComparison:
        ctx = trial.context
        key = (ctx.upstream, ctx.model_name)
        lkey = (ctx.upstream, ctx.model_name, ctx.load_bucket)
        overall = self._overall.get(key)
        if overall is None:
            overall = self._overall[key] = OnlineEstimator(self.online)
        by_load = self._by_load.get(lkey)
        if by_load is None:
            by_load = self._by_load[lkey] = OnlineEstimator(self.online)
        if comparison is None:
            comparison = self.compare(trial)  # compared once, folded into both views
        overall.add(comparison)
        by_load.add(comparison)
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
        return comparison

    def add_exemplar(self, exemplar: Exemplar) -> None:
        self.exemplars.append(exemplar)

    def snapshots(self) -> Iterator[tuple[Key, OnlineSnapshot, float]]:
        for key, est in self._overall.items():
            yield key, est.snapshot(), self._last_update.get(key, 0.0)

    def load_snapshots(self) -> Iterator[tuple[tuple[str, str, str], OnlineSnapshot]]:
        """Estimates per load bucket that has seen at least one trial."""
        for lkey, est in self._by_load.items():
            snap = est.snapshot()
            if snap.pairs:
                yield lkey, snap

    def counters(self) -> Iterator[tuple[tuple[str, str, str], SufficientStats]]:
        """Undecayed additive statistics per (upstream, model_name, load_bucket), primed ones
        included: what the Prometheus counters export."""
        for lkey, est in self._by_load.items():
            yield lkey, est.stats()

    def positions(self) -> Iterator[tuple[Key, list[int], int]]:
        """Per key: counts per POSITION_BOUNDS bucket (not cumulative) and the sum of positions."""
        for key, counts in self._positions.items():
            yield key, counts, self._position_sums.get(key, 0)
