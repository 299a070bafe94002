"""Online state (science.md §3e): an exponentially weighted log-likelihood on a fixed log-spaced
grid of temperatures plus counters. O(grid) memory and work per update whatever the traffic.

Decay is per trial (one primary and its replays): each trial multiplies the old state by
λ = 2^(−1/half_life_trials). Counting trials rather than compared pairs keeps the memory the same
whatever `replays` is (a trial of r replays has (r+1)r/2 pairs, correlated through shared runs). The undecayed sums (`SufficientStats`) add up across
replicas; Prometheus pools them by summing increase() of the exported counters.

The trial is the unit of independence (estimator.profile): next to Σ −ℓ(T_g) the state keeps, per
grid point, Σ_t s_t(T_g)² (s_t the slope of trial t's −ℓ in log T) and the number of scored trials,
so the interval carries the sandwich design effect; the small-count correction counts trials that
diverged; the hazard's interval uses the per-trial second moments of (diverged pairs, tokens at
risk). All of them add up across replicas.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from estimator.compare import Comparison, Divergence, compare_trial
from estimator.jitter import sigma_to_temperature
from estimator.likelihood import GridLoglik
from estimator.model import Trial
from estimator.profile import grid_profile, scores
from estimator.result import Counts, EstimateResult
from estimator.stats import HazardRate, clustered_hazard

__all__ = [
    "Comparison",
    "Divergence",
    "LikelihoodCheckError",
    "OnlineConfig",
    "OnlineDiagnostics",
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


class LikelihoodCheckError(ArithmeticError):
    """A trial's −ℓ came out negative or not finite: every term of it is −log of a probability
    (a sum of non-negative gaps over T and of log(1 + Σ e^(−gap/T))), so this is a bug in the
    comparison (a negative gap) or in the arithmetic, never a property of the data."""


def checked_nll(nll: np.ndarray) -> np.ndarray:
    """`nll` itself when every value is finite and >= 0, else LikelihoodCheckError."""
    bad = ~np.isfinite(nll) | (nll < 0)
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise LikelihoodCheckError(
            f"trial -log-likelihood {float(nll[j])!r} at grid point {j}: must be finite and >= 0"
        )
    return nll


# What one trial adds to the online state: a `Comparison` scored on the grid
# (`OnlineEstimator.score`). The older name, kept for the shadow path.
TrialComparison = Comparison


@dataclass(frozen=True)
class OnlineDiagnostics:
    """The rest of an online estimate. ``counts``: undecayed totals (rounded); ``effective_pairs``:
    the decayed pair count the estimate rests on; ``hazard``: the per-token divergence hazard with
    its trial-level interval; ``exact_match_rate``; the jitter σ̂_Δ, p₀ and their temperature
    (NaN before a position with top-k logprobs was compared); ``design_effect``: the interval's
    trial-level multiplier of the drops (>= 1); ``diverged_trials``: undecayed, rounded."""

    counts: Counts
    effective_pairs: float
    hazard: HazardRate
    exact_match_rate: float
    jitter_sigma: float
    p_identical: float
    jitter_temperature: float
    design_effect: float = 1.0
    diverged_trials: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "counts": self.counts.to_dict()}


@dataclass(frozen=True)
class OnlineSnapshot(EstimateResult[OnlineDiagnostics]):
    """Current estimate: an `EstimateResult` at the configured level. ``method`` is "likelihood"
    once any trial carried top-k logprobs, else "hazard-only" (estimate/lower/upper NaN:
    converting a hazard to T needs a reference curve, see estimator.hazard).

    The properties below read the diagnostics under the names the snapshot had before it was an
    `EstimateResult` (the proxy's /tbg, metrics and history read them)."""

    @property
    def trials(self) -> int:
        return self.diagnostics.counts.trials

    @property
    def pairs(self) -> int:
        return self.diagnostics.counts.pairs

    @property
    def diverged(self) -> int:
        return self.diagnostics.counts.diverged

    @property
    def tokens_at_risk(self) -> int:
        return self.diagnostics.counts.tokens_at_risk

    @property
    def diverged_trials(self) -> int:
        return self.diagnostics.diverged_trials

    @property
    def effective_pairs(self) -> float:
        return self.diagnostics.effective_pairs

    @property
    def hazard(self) -> float:
        return self.diagnostics.hazard.estimate

    @property
    def hazard_lower(self) -> float:
        return self.diagnostics.hazard.lower

    @property
    def hazard_upper(self) -> float:
        return self.diagnostics.hazard.upper

    @property
    def exact_match_rate(self) -> float:
        return self.diagnostics.exact_match_rate

    @property
    def jitter_sigma(self) -> float:
        return self.diagnostics.jitter_sigma

    @property
    def p_identical(self) -> float:
        return self.diagnostics.p_identical

    @property
    def jitter_temperature(self) -> float:
        return self.diagnostics.jitter_temperature

    @property
    def design_effect(self) -> float:
        return self.diagnostics.design_effect


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
    "scored_trials",
    "scored_diverged_trials",
    "diverged_trials",
    "diverged_sq",
    "diverged_x_risk",
    "risk_sq",
)
# second moments: decayed by λ² (weights squared), not λ
_SECOND = ("diverged_sq", "diverged_x_risk", "risk_sq")


@dataclass(frozen=True)
class SufficientStats:
    """Undecayed additive statistics: counters, Σ −ℓ(T_g) and Σ_t s_t(T_g)² on the grid ``grid``
    (``score_sq`` empty: not recorded, read as zeros)."""

    grid: tuple[float, ...]
    nll: tuple[float, ...]
    score_sq: tuple[float, ...] = ()
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
    scored_trials: float = 0
    scored_diverged_trials: float = 0
    diverged_trials: float = 0
    diverged_sq: float = 0
    diverged_x_risk: float = 0
    risk_sq: float = 0

    def squares(self) -> tuple[float, ...]:
        return self.score_sq if self.score_sq else (0.0,) * len(self.nll)

    def __add__(self, other: SufficientStats) -> SufficientStats:
        if not np.allclose(self.grid, other.grid, rtol=1e-9):
            raise ValueError("cannot pool statistics computed on different grids")
        kw = {c: getattr(self, c) + getattr(other, c) for c in _COUNTERS}
        nll = tuple(float(a + b) for a, b in zip(self.nll, other.nll, strict=True))
        sq = tuple(float(a + b) for a, b in zip(self.squares(), other.squares(), strict=True))
        return SufficientStats(self.grid, nll, sq, **kw)

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: list(getattr(self, f.name))
            if f.name in ("grid", "nll", "score_sq")
            else getattr(self, f.name)
            for f in fields(self)
        }

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> SufficientStats:
        kw = {c: float(d.get(c, 0)) for c in _COUNTERS}
        grid = tuple(float(x) for x in d["grid"])
        nll = tuple(float(x) for x in d["nll"])
        sq = tuple(float(x) for x in d.get("score_sq", ()))
        if len(grid) != len(nll) or (sq and len(sq) != len(nll)):
            raise ValueError("grid, nll and score_sq have different lengths")
        return SufficientStats(grid, nll, sq, **kw)


def profile_from_grid(
    grid: np.ndarray,
    nll: np.ndarray,
    *,
    events: float,
    level: float = 0.95,
    score_sq: np.ndarray | None = None,
    trials: float = 0.0,
) -> tuple[float, float, float]:
    """(estimate, lower, upper) from Σ −ℓ on a log grid behind `events` independent divergences
    (trials that diverged), read off local parabolas in log T (estimator.profile, with its
    small-count correction of the upper end and, given Σ_t s_t² and the trial count, the
    trial-level design effect; the recording rules do the same arithmetic). Without a divergence:
    (0, 0, upper). Bounds are clipped to the grid (lower 0 below it)."""
    p = grid_profile(grid, nll, events=events, level=level, score_sq=score_sq, trials=trials)
    return p.estimate, p.lower, p.upper


def _snapshot(
    s: Mapping[str, float],
    nll: np.ndarray,
    score_sq: np.ndarray,
    grid: np.ndarray,
    totals: Mapping[str, float],
    level: float,
    w2: float | None = None,
) -> OnlineSnapshot:
    """`w2` = Σw² over the trials of decayed sums (the decayed counters are Σw·x, the second
    moments Σw²·x); None: undecayed. The design effect's n counts every trial (one without
    logprobs is a unit with score 0), as the recording rules read `tbg_trials_total`."""
    n, k = s["trials"], 1.0
    n_sq = n if w2 is None else w2
    if s["scored_pairs"] > 0:
        # effective number of independent events under decay (Kish): Σw·x · Σw / Σw²
        events = s["scored_diverged_trials"] * (n / n_sq if n_sq > 0 else 1.0)
        p = grid_profile(
            grid, nll, events=events, level=level, score_sq=score_sq, trials=n, trials_sq=n_sq
        )
        est, lo, hi, k = p.estimate, p.lower, p.upper, p.design_effect
        method = "likelihood"
    else:
        est = lo = hi = math.nan
        method = "hazard-only"
    hz = clustered_hazard(
        s["diverged"],
        s["tokens_at_risk"],
        diverged_sq=s["diverged_sq"],
        diverged_x_risk=s["diverged_x_risk"],
        risk_sq=s["risk_sq"],
        pairs_per_trial=s["pairs"] / s["trials"] if s["trials"] > 0 else 1.0,
        level=level,
    )
    jp = s["jitter_positions"]
    sigma = math.sqrt(s["jitter_sq_sum"] / (2 * jp)) if jp > 0 else math.nan
    diag = OnlineDiagnostics(
        counts=Counts(
            round(totals["trials"]),
            round(totals["pairs"]),
            round(totals["diverged"]),
            round(totals["tokens_at_risk"]),
        ),
        effective_pairs=float(s["pairs"]),
        hazard=hz,
        exact_match_rate=s["exact_match_pairs"] / s["pairs"] if s["pairs"] > 0 else math.nan,
        jitter_sigma=sigma,
        p_identical=s["jitter_identical_positions"] / jp if jp > 0 else math.nan,
        jitter_temperature=sigma_to_temperature(sigma) if jp > 0 else math.nan,
        design_effect=k,
        diverged_trials=round(totals["diverged_trials"]),
    )
    return OnlineSnapshot(est, lo, hi, level, method, diag)


def estimate_from_stats(
    stats: SufficientStats, grid: np.ndarray | None = None, level: float = 0.95
) -> OnlineSnapshot:
    """The estimate on pooled, undecayed statistics (effective_pairs == pairs)."""
    g = np.asarray(stats.grid if grid is None else grid, dtype=float)
    s = {c: float(getattr(stats, c)) for c in _COUNTERS}
    return _snapshot(s, np.asarray(stats.nll), np.asarray(stats.squares()), g, s, level)


class OnlineEstimator:
    """Exponentially weighted estimate of T_bg; `update` per trial, `snapshot` at any time."""

    def __init__(self, config: OnlineConfig | None = None) -> None:
        self.config = config or OnlineConfig()
        self._grid = self.config.grid
        self._grid_nll = GridLoglik(self._grid)
        self._lam = 2.0 ** (-1.0 / self.config.half_life_trials)
        n = len(_COUNTERS)
        self._dec = np.zeros(n)  # decayed counters (second moments decayed by λ²)
        self._tot = np.zeros(n)  # undecayed counters
        self._second = np.array([c in _SECOND for c in _COUNTERS])
        self._dec_nll = np.zeros(self._grid.size)
        self._dec_sq = np.zeros(self._grid.size)  # Σ w²·s_t²
        self._dec_w2 = 0.0  # Σ w² over trials
        self._tot_nll = np.zeros(self._grid.size)
        self._tot_sq = np.zeros(self._grid.size)
        self._snap: OnlineSnapshot | None = None  # computed once per change, not per scrape

    def score(self, c: Comparison) -> Comparison:
        """``c`` scored on this estimator's grid: ``nll`` and ``score_sq`` filled in (zeros when
        not scored), ``nodes`` and ``jitter_gaps`` dropped (used up). Raises
        LikelihoodCheckError when its −ℓ is negative or not finite (a bug, see checked_nll)."""
        zeros = np.zeros(self._grid.size)
        if c.nodes is not None and c.scored:
            nll = checked_nll(self._grid_nll.nll(c.nodes))
            sq = scores(self._grid, nll) ** 2
        else:
            nll, sq = zeros, zeros
        return replace(c, nodes=None, jitter_gaps=np.zeros(0), nll=nll, score_sq=sq)

    def compare(self, trial: Trial) -> Comparison:
        """``score(compare_trial(trial))``: what the trial would add, without touching the state."""
        return self.score(compare_trial(trial))

    def update(self, trial: Trial) -> Comparison:
        tc = self.compare(trial)
        self.add(tc)
        return tc

    def add(self, tc: Comparison) -> None:
        """Fold a comparison into the state (decaying the old state by λ, second moments by λ²);
        one not yet scored on the grid is scored first."""
        if tc.nll.size != self._grid.size:
            tc = self.score(tc)
        d, e = float(tc.diverged), float(tc.tokens_at_risk)
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
                1.0 if tc.scored else 0.0,
                1.0 if tc.scored and tc.diverged > 0 else 0.0,
                1.0 if tc.diverged > 0 else 0.0,
                d * d,
                d * e,
                e * e,
            ]
        )
        f = self._lam
        self._dec *= np.where(self._second, f * f, f)
        self._dec += row
        self._tot += row
        self._dec_nll *= f
        self._dec_nll += tc.nll
        sq = tc.score_sq if tc.score_sq.size else np.zeros(self._grid.size)
        self._dec_sq *= f * f
        self._dec_sq += sq
        self._dec_w2 = self._dec_w2 * f * f + 1.0
        self._tot_nll += tc.nll
        self._tot_sq += sq
        self._snap = None

    def snapshot(self) -> OnlineSnapshot:
        if self._snap is None:
            self._snap = self._compute_snapshot()
        return self._snap

    def _compute_snapshot(self) -> OnlineSnapshot:
        dec = dict(zip(_COUNTERS, self._dec.tolist(), strict=True))
        tot = dict(zip(_COUNTERS, self._tot.tolist(), strict=True))
        # Decayed weights w <= 1: the sandwich reads Σw·(−ℓ_t) against Σw²·s_t², which gives the
        # weighted estimate its own spread (Σw²·I / (Σw·I)²) without a separate correction.
        return _snapshot(
            dec, self._dec_nll, self._dec_sq, self._grid, tot, self.config.level, self._dec_w2
        )

    def stats(self) -> SufficientStats:
        kw = dict(zip(_COUNTERS, self._tot.tolist(), strict=True))
        return SufficientStats(
            tuple(self._grid.tolist()),
            tuple(self._tot_nll.tolist()),
            tuple(self._tot_sq.tolist()),
            **kw,
        )
