"""Online state (science.md §3e): an exponentially weighted log-likelihood on a fixed log-spaced
grid of temperatures plus counters. O(grid) memory and work per update whatever the traffic.

Decay is per trial (one primary and its replays): each trial multiplies the old state by
λ = 2^(−1/half_life_trials). Counting trials rather than compared pairs keeps the memory the same
whatever `replays` is (a trial of r replays has (r+1)r/2 pairs, correlated through shared runs). The undecayed sums (`SufficientStats`) add up across
replicas; Prometheus pools them by summing increase() of the exported counters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from estimator.compare import Divergence
from estimator.jitter import sigma_to_temperature
from estimator.likelihood import GridLoglik
from estimator.model import Trial
from estimator.pair import compare_fast
from estimator.profile import grid_profile
from estimator.stats import divergence_hazard

__all__ = [
    "Divergence",
    "OnlineConfig",
    "OnlineEstimator",
    "OnlineSnapshot",
    "SufficientStats",
    "TrialComparison",
    "estimate_from_stats",
    "profile_from_grid",
]


@dataclass(frozen=True)
class OnlineConfig:
    half_life_trials: float = 200
    grid_size: int = 64
    t_min: float = 1e-4
    t_max: float = 1.0
    level: float = 0.95

    def __post_init__(self) -> None:
        if not (0 < self.t_min < self.t_max) or self.grid_size < 3:
            raise ValueError("need 0 < t_min < t_max and grid_size >= 3")
        if self.half_life_trials <= 0:
            raise ValueError("half_life_trials must be > 0")

    @property
    def grid(self) -> np.ndarray:
        return np.geomspace(self.t_min, self.t_max, self.grid_size)


@dataclass(frozen=True)
class TrialComparison:
    """What one trial adds. ``nll`` is the undecayed per-grid negative log-likelihood increment
    (>= 0; zeros when the runs carry no top-k logprobs, ``scored`` False)."""

    pairs: int
    diverged: int
    tokens_at_risk: int
    exact_match_pairs: int
    first_divergences: tuple[int, ...]
    nll: np.ndarray
    jitter_sq_sum: float
    jitter_positions: int
    jitter_identical_positions: int
    exemplars: tuple[Divergence, ...]
    scored: bool = False


@dataclass(frozen=True)
class OnlineSnapshot:
    """Current estimate. ``method`` is "likelihood" once any trial carried top-k logprobs, else
    "hazard-only" (estimate/lower/upper NaN: converting a hazard to T needs a reference curve,
    see estimator.hazard)."""

    estimate: float
    lower: float
    upper: float
    method: str
    pairs: int
    diverged: int
    tokens_at_risk: int
    effective_pairs: float
    hazard: float
    hazard_lower: float
    hazard_upper: float
    exact_match_rate: float
    jitter_sigma: float | None
    p_identical: float | None
    jitter_temperature: float | None


_COUNTERS = (
    "trials",
    "pairs",
    "diverged",
    "tokens_at_risk",
    "exact_match_pairs",
    "scored_pairs",
    "scored_diverged",
    "jitter_sq_sum",
    "jitter_positions",
    "jitter_identical_positions",
)


@dataclass(frozen=True)
class SufficientStats:
    """Undecayed additive statistics: counters and Σ −ℓ(T_g) on the grid ``grid``."""

    grid: tuple[float, ...]
    nll: tuple[float, ...]
    trials: float = 0
    pairs: float = 0
    diverged: float = 0
    tokens_at_risk: float = 0
    exact_match_pairs: float = 0
    scored_pairs: float = 0
    scored_diverged: float = 0
    jitter_sq_sum: float = 0.0
    jitter_positions: float = 0
    jitter_identical_positions: float = 0

    def __add__(self, other: SufficientStats) -> SufficientStats:
        if not np.allclose(self.grid, other.grid, rtol=1e-9):
            raise ValueError("cannot pool statistics computed on different grids")
        kw = {c: getattr(self, c) + getattr(other, c) for c in _COUNTERS}
        nll = tuple(float(a + b) for a, b in zip(self.nll, other.nll, strict=True))
        return SufficientStats(self.grid, nll, **kw)

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: list(getattr(self, f.name))
            if f.name in ("grid", "nll")
            else getattr(self, f.name)
            for f in fields(self)
        }

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> SufficientStats:
        kw = {c: float(d.get(c, 0)) for c in _COUNTERS}
        grid = tuple(float(x) for x in d["grid"])
        nll = tuple(float(x) for x in d["nll"])
        if len(grid) != len(nll):
            raise ValueError("grid and nll have different lengths")
        return SufficientStats(grid, nll, **kw)


def profile_from_grid(
    grid: np.ndarray, nll: np.ndarray, *, events: float, level: float = 0.95
) -> tuple[float, float, float]:
    """(estimate, lower, upper) from Σ −ℓ on a log grid behind `events` divergences, read off local
    parabolas in log T (estimator.profile, with its small-count correction of the upper end; the
    recording rules do the same arithmetic). Without a divergence: (0, 0, upper). Bounds are clipped
    to the grid (lower 0 below it)."""
    p = grid_profile(grid, nll, events=events, level=level)
    return p.estimate, p.lower, p.upper


def _snapshot(
    s: Mapping[str, float],
    nll: np.ndarray,
    grid: np.ndarray,
    totals: Mapping[str, float],
    level: float,
    scale: float = 1.0,
) -> OnlineSnapshot:
    if s["scored_pairs"] > 0:
        # `scale` (effective sample size under decay) applies to the divergence count as to the nll
        events = s["scored_diverged"] * scale
        est, lo, hi = profile_from_grid(grid, nll * scale, events=events, level=level)
        method = "likelihood"
    else:
        est = lo = hi = math.nan
        method = "hazard-only"
    hz = divergence_hazard(s["diverged"], s["tokens_at_risk"], level)
    jp = s["jitter_positions"]
    sigma = math.sqrt(s["jitter_sq_sum"] / (2 * jp)) if jp > 0 else None
    return OnlineSnapshot(
        estimate=est,
        lower=lo,
        upper=hi,
        method=method,
        pairs=round(totals["pairs"]),
        diverged=round(totals["diverged"]),
        tokens_at_risk=round(totals["tokens_at_risk"]),
        effective_pairs=float(s["pairs"]),
        hazard=hz.estimate,
        hazard_lower=hz.lower,
        hazard_upper=hz.upper,
        exact_match_rate=s["exact_match_pairs"] / s["pairs"] if s["pairs"] > 0 else math.nan,
        jitter_sigma=sigma,
        p_identical=s["jitter_identical_positions"] / jp if jp > 0 else None,
        jitter_temperature=sigma_to_temperature(sigma) if sigma is not None else None,
    )


def estimate_from_stats(
    stats: SufficientStats, grid: np.ndarray | None = None, level: float = 0.95
) -> OnlineSnapshot:
    """The estimate on pooled, undecayed statistics (effective_pairs == pairs)."""
    g = np.asarray(stats.grid if grid is None else grid, dtype=float)
    s = {c: float(getattr(stats, c)) for c in _COUNTERS}
    return _snapshot(s, np.asarray(stats.nll), g, s, level)


class OnlineEstimator:
    """Exponentially weighted estimate of T_bg; `update` per trial, `snapshot` at any time."""

    def __init__(self, config: OnlineConfig | None = None) -> None:
        self.config = config or OnlineConfig()
        self._grid = self.config.grid
        self._grid_nll = GridLoglik(self._grid)
        self._lam = 2.0 ** (-1.0 / self.config.half_life_trials)
        n = len(_COUNTERS)
        self._dec = np.zeros(n)  # decayed counters
        self._tot = np.zeros(n)  # undecayed counters
        self._dec_nll = np.zeros(self._grid.size)
        self._dec_w2 = 0.0  # Σ w²·pairs over trials (information-weighted, see snapshot)
        self._tot_nll = np.zeros(self._grid.size)
        self._snap: OnlineSnapshot | None = None  # computed once per change, not per scrape

    def compare(self, trial: Trial) -> TrialComparison:
        """The comparison of one trial, without touching the state."""
        c = compare_fast(trial)
        scored = c.nodes is not None and c.nodes.weights.size > 0
        nll = self._grid_nll.nll(c.nodes) if c.nodes is not None and scored else None
        return TrialComparison(
            pairs=c.pairs,
            diverged=c.diverged,
            tokens_at_risk=c.tokens_at_risk,
            exact_match_pairs=c.exact_match_pairs,
            first_divergences=c.first_divergences,
            nll=np.maximum(nll, 0.0) if nll is not None else np.zeros(self._grid.size),
            jitter_sq_sum=c.jitter_sq_sum,
            jitter_positions=c.jitter_positions,
            jitter_identical_positions=c.jitter_identical_positions,
            exemplars=c.exemplars,
            scored=scored,
        )

    def update(self, trial: Trial) -> TrialComparison:
        tc = self.compare(trial)
        self.add(tc)
        return tc

    def add(self, tc: TrialComparison) -> None:
        """Fold a comparison into the state (decaying the old state by λ)."""
        row = np.array(
            [
                1.0,
                tc.pairs,
                tc.diverged,
                tc.tokens_at_risk,
                tc.exact_match_pairs,
                tc.pairs if tc.scored else 0,
                tc.diverged if tc.scored else 0,
                tc.jitter_sq_sum,
                tc.jitter_positions,
                tc.jitter_identical_positions,
            ]
        )
        f = self._lam
        self._dec *= f
        self._dec += row
        self._tot += row
        self._dec_nll *= f
        self._dec_nll += tc.nll
        self._dec_w2 = self._dec_w2 * f * f + tc.pairs
        self._tot_nll += tc.nll
        self._snap = None

    def snapshot(self) -> OnlineSnapshot:
        if self._snap is None:
            self._snap = self._compute_snapshot()
        return self._snap

    def _compute_snapshot(self) -> OnlineSnapshot:
        dec = dict(zip(_COUNTERS, self._dec.tolist(), strict=True))
        tot = dict(zip(_COUNTERS, self._tot.tolist(), strict=True))
        # Decayed weights w <= 1 make the weighted log-likelihood's curvature (Σ w·I) overstate
        # the estimate's variance (Σ w²·I / (Σ w·I)²): scaling by Σw / Σw² (Kish's effective sample
        # size over Σw) gives the interval the weighted estimate's own spread. 1 without decay.
        # A trial's information is taken as proportional to its pairs: Σw·p / Σw²·p.
        scale = dec["pairs"] / self._dec_w2 if self._dec_w2 > 0 else 1.0
        return _snapshot(dec, self._dec_nll, self._grid, tot, self.config.level, scale)

    def stats(self) -> SufficientStats:
        kw = dict(zip(_COUNTERS, self._tot.tolist(), strict=True))
        return SufficientStats(tuple(self._grid.tolist()), tuple(self._tot_nll.tolist()), **kw)
