"""Backend fingerprints per (upstream, model_name): which backend answered, when it changed, and
T_bg before and after.

A new vLLM version, GPU type or checkpoint changes the answers; the upstream says so in
`system_fingerprint` (proxy.shadow.fingerprint_wire). The Aggregator hands every compared trial's
fingerprints to `FingerprintTracker.observe`; readers get immutable `FingerprintSummary`s.

What a change is. The *current* fingerprint is the one that dominates the recent trials: at least
`share` (90 %) of the last `window` (40) trials that carried a fingerprint, once `min_trials` (10)
of them are in. A change is the current fingerprint giving way to another that dominates the same
way. So:
- the first fingerprint a key establishes is its first epoch, not a change;
- a rolling upgrade is one change, counted when the new version has taken over the window
  (36 of the last 40 trials), whatever the mix looked like on the way;
- pods of mixed versions behind one upstream (a fleet half upgraded, a canary pod) flap
  between fingerprints trial by trial, yet no fingerprint dominates, so nothing is counted: the
  current epoch stays, and the other fingerprints are counted beside it (with a 50/50 mix, 36 of
  40 trials from one side happen by chance once in ~10^7 trials; a change back needs the same
  90 %, so a lasting mix cannot flap back and forth);
- a rollback is a change too (back to the old fingerprint, once it dominates again).
Trials without a fingerprint (an upstream that sends none) are counted apart and never decide.

Estimates per epoch. Each tracked fingerprint has its own online estimator
(estimator.online.OnlineEstimator, the shadow path's config), fed with that fingerprint's trials
only, from its first trial on (those before it took over included: they are its answers). A trial
whose replays report another fingerprint than its primary (`TrialFingerprint.mixed`) compares two
backends: it is counted, not folded into any epoch's estimate. The *current* and the *previous*
epoch are the estimators of the current and of the last replaced fingerprint: T_bg before and
after a change, side by side, each with its interval.

Bounded: at most `tracked` (4) fingerprints per key have a count and an estimator (always the
current and the previous one); a new one evicts the least recently seen other one, whose count
joins the pooled `other` count.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from estimator.online import OnlineConfig, OnlineEstimator, OnlineSnapshot, TrialComparison
from proxy.shadow.fingerprint_wire import TrialFingerprint

Key = tuple[str, str]  # (upstream, model_name), as proxy.shadow.view names it


@dataclass(frozen=True, slots=True)
class FingerprintPolicy:
    """How a change is told from flapping, and how many fingerprints are kept per key."""

    window: int = 40  # the last fingerprinted trials a decision looks at
    share: float = 0.9  # the share of the window a fingerprint needs to become the current one
    min_trials: int = 10  # fingerprinted trials in the window before any decision
    tracked: int = 4  # fingerprints with their own count and estimator; the rest pooled

    def __post_init__(self) -> None:
        if not 1 <= self.min_trials <= self.window:
            raise ValueError("fingerprints: need 1 <= min_trials <= window")
        if not 0.5 < self.share <= 1.0:
            raise ValueError("fingerprints: share must be in (0.5, 1]: one fingerprint at most")
        if self.tracked < 3:
            raise ValueError("fingerprints: tracked must be >= 3 (current, previous, a new one)")


@dataclass(frozen=True, slots=True)
class Epoch:
    """One fingerprint's estimate: `trials` it answered (mixed ones included), the estimate from
    those that compared like with like, and when it became the current one (None: never yet)."""

    fingerprint: str
    trials: int
    snapshot: OnlineSnapshot
    since: float | None
    until: float | None  # when it was replaced (None: still current, or never current)


@dataclass(frozen=True, slots=True)
class FingerprintSummary:
    """What one (upstream, model_name) has shown of its backend."""

    key: Key
    current: Epoch | None
    previous: Epoch | None
    changes: int  # current fingerprint replaced by another (the first epoch is not a change)
    last_change_at: float | None
    counts: tuple[tuple[str, int], ...]  # trials per tracked fingerprint, most first
    other: int  # trials of fingerprints no longer tracked (pooled)
    unknown: int  # trials whose primary carried no fingerprint
    mixed: int  # trials whose replays reported another fingerprint than their primary

    @property
    def moved(self) -> str | None:
        """`up` / `down` when the current epoch's interval lies wholly above/below the previous
        epoch's; None when they overlap, or either is unknown."""
        if self.current is None or self.previous is None:
            return None
        cur, prev = self.current.snapshot, self.previous.snapshot
        if not all(math.isfinite(x) for x in (cur.lower, cur.upper, prev.lower, prev.upper)):
            return None
        if cur.lower > prev.upper:
            return "up"
        if cur.upper < prev.lower:
            return "down"
        return None


@dataclass
class _Tracked:
    estimator: OnlineEstimator
    trials: int = 0
    last_seen: int = 0
    since: float | None = None
    until: float | None = None


@dataclass
class _KeyState:
    policy: FingerprintPolicy
    online: OnlineConfig
    window: deque[str] = field(init=False)
    tracked: dict[str, _Tracked] = field(default_factory=dict)
    current: str | None = None
    previous: str | None = None
    changes: int = 0
    last_change_at: float | None = None
    other: int = 0
    unknown: int = 0
    mixed: int = 0
    seq: int = 0

    def __post_init__(self) -> None:
        self.window = deque(maxlen=self.policy.window)

    def observe(self, fp: TrialFingerprint, comparison: TrialComparison, now: float) -> None:
        if fp.primary is None:
            self.unknown += 1
            return
        self.seq += 1
        entry = self._track(fp.primary)
        entry.trials += 1
        entry.last_seen = self.seq
        if fp.mixed:
            self.mixed += 1
        else:
            entry.estimator.add(comparison)
        self.window.append(fp.primary)
        self._decide(now)

    def _track(self, fingerprint: str) -> _Tracked:
        entry = self.tracked.get(fingerprint)
        if entry is not None:
            return entry
        if len(self.tracked) >= self.policy.tracked:
            keep = {self.current, self.previous}
            victim = min(
                (f for f in self.tracked if f not in keep),
                key=lambda f: self.tracked[f].last_seen,
            )
            self.other += self.tracked.pop(victim).trials
        entry = self.tracked[fingerprint] = _Tracked(OnlineEstimator(self.online))
        return entry

    def _decide(self, now: float) -> None:
        if len(self.window) < self.policy.min_trials:
            return
        leader, n = Counter(self.window).most_common(1)[0]
        if leader == self.current or n < self.policy.share * len(self.window):
            return
        entry = self._track(leader)
        if self.current is not None:
            self.tracked[self.current].until = now
            self.previous = self.current
            self.changes += 1
            self.last_change_at = now
        self.current = leader
        entry.since, entry.until = now, None

    def summary(self, key: Key) -> FingerprintSummary:
        def epoch(fingerprint: str | None) -> Epoch | None:
            entry = self.tracked.get(fingerprint) if fingerprint is not None else None
            if fingerprint is None or entry is None:
                return None
            return Epoch(fingerprint, entry.trials, entry.estimator.snapshot(), entry.since,
                         entry.until)  # fmt: skip

        counts = sorted(((f, e.trials) for f, e in self.tracked.items()), key=lambda c: -c[1])
        return FingerprintSummary(
            key, epoch(self.current), epoch(self.previous), self.changes, self.last_change_at,
            tuple(counts), self.other, self.unknown, self.mixed,
        )  # fmt: skip


class FingerprintTracker:
    """Per (upstream, model_name) fingerprint state; written by the Aggregator (event loop only)."""

    def __init__(
        self,
        online: OnlineConfig,
        policy: FingerprintPolicy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._online = online
        self._policy = policy or FingerprintPolicy()
        self._clock = clock
        self._keys: dict[Key, _KeyState] = {}

    def observe(
        self, key: Key, fingerprint: TrialFingerprint | None, comparison: TrialComparison
    ) -> None:
        """One compared trial of `key` and the fingerprints its runs carried (None: not read)."""
        if fingerprint is None:
            fingerprint = TrialFingerprint(None)
        state = self._keys.get(key)
        if state is None:
            if fingerprint.primary is None:
                return  # a key that never showed a fingerprint has nothing to report
            state = self._keys[key] = _KeyState(self._policy, self._online)
        state.observe(fingerprint, comparison, self._clock())

    def publish(self) -> tuple[FingerprintSummary, ...]:
        """Immutable summaries of every key that showed a fingerprint (snapshots are cached per
        estimator until it changes)."""
        return tuple(state.summary(key) for key, state in self._keys.items())
