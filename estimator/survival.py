"""`survival`: the pair (survival) form of the Boltzmann likelihood (science.md §3b).

For a pair of runs, the positions before the first divergence K survived and position K failed:
ℓ(T) = Σ_{s<K} log(1 − h_s(T)) + δ·log h_K(T), h_s(T) = 1 − Σ_i p_s(i; T)² the probability that
two independent draws from p_s = softmax(ẑ_s/T) differ. Unlike the trie form it ignores which
tokens were chosen (only "same or not"), so it is robust to mislabelled or re-tokenised choices,
at the cost of some information.

Conventions (shared with `likelihood`, see compare.py): ẑ_s is the mean of the two runs' top-k
logprobs over the union of their tokens (a token missing from one run's top-k takes that run's
smallest reported logprob); p_s is the softmax over the reported tokens only (the tail is dropped
and p renormalised, so h is the hazard conditional on both draws landing in the top-k: exact
when k covers the support, slightly low otherwise). An end-of-sequence divergence (one run
stopped) is not scored (no top-k at K for the stopped run). Pairs: all pairs of runs that report
top-k logprobs.

ℓ is not concave in general: the MLE is the best point of a log-spaced grid refined by a bounded
scalar search, and the profile interval ends are bracketed on the grid and found with Brent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import optimize, stats

from estimator.comparison import pair_divergence
from estimator.model import Run, Trial
from estimator.nodes import union_node
from estimator.result import Counts, EstimateResult

_GRID_POINTS = 97  # log-spaced search grid over [t_min, t_max]


@dataclass(frozen=True)
class SurvivalSteps:
    """Positions at risk: ``z`` (N, w) reference logits (−inf padded), ``failed`` (N,) True at
    the position where the pair diverged."""

    z: np.ndarray
    failed: np.ndarray

    def loglik(self, temp: float) -> float:
        """ℓ(T) (see the module docstring)."""
        a = (self.z - self.z.max(1, keepdims=True)) / temp  # max entry 0, −inf padding
        log_s2 = np.log(np.exp(2 * a).sum(1)) - 2 * np.log(np.exp(a).sum(1))  # log Σ p²
        log_s2 = np.minimum(log_s2, 0.0)
        surv = float(log_s2[~self.failed].sum())
        with np.errstate(divide="ignore"):
            fail = float(np.log(-np.expm1(log_s2[self.failed])).sum())
        return surv + fail


@dataclass(frozen=True)
class SurvivalDiagnostics:
    """``counts`` (tokens at risk and diverged: the scored positions and failures),
    ``positions`` scored, ``loglik_max`` = ℓ(T̂) (NaN when nothing diverged) and whether the
    upper end was clipped to t_max."""

    counts: Counts
    positions: int
    loglik_max: float
    upper_at_t_max: bool

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "counts": self.counts.to_dict()}


def _pair_steps(a: Run, b: Run) -> tuple[list[np.ndarray], list[bool]]:
    pos, div, _ = pair_divergence(a, b)
    ta, tb = a.top_logprobs, b.top_logprobs
    assert ta is not None and tb is not None
    n = min(len(a.tokens), len(b.tokens))
    scored_fail = div and pos < n  # an EOS divergence (pos == n) is not scored
    stop = pos + 1 if scored_fail else n
    rows: list[np.ndarray] = []
    k = len(ta[0]) if stop else 0
    if stop and all(len(x) == k for x in ta[:stop]) and all(len(x) == k for x in tb[:stop]):
        la = np.array([[x for _, x in row] for row in ta[:stop]])
        lb = np.array([[x for _, x in row] for row in tb[:stop]])
        same = [
            [t for t, _ in x] == [t for t, _ in y]
            for x, y in zip(ta[:stop], tb[:stop], strict=True)
        ]
        z = np.sort((la + lb) / 2, axis=1)[:, ::-1]
        rows = [
            z[s] if same[s] else union_node((ta[s], tb[s]), (a.tokens[s], b.tokens[s]))[0]
            for s in range(stop)
        ]
    else:
        rows = [union_node((ta[s], tb[s]), (a.tokens[s], b.tokens[s]))[0] for s in range(stop)]
    failed = [False] * len(rows)
    if scored_fail:
        failed[-1] = True
    return rows, failed


def survival_steps(trials: Iterable[Trial]) -> SurvivalSteps:
    """The positions at risk of every pair of runs that report top-k logprobs."""
    rows: list[np.ndarray] = []
    failed: list[bool] = []
    for t in trials:
        runs = [r for r in t.runs if r.has_top_logprobs]
        for i in range(len(runs)):
            for j in range(i + 1, len(runs)):
                zs, fs = _pair_steps(runs[i], runs[j])
                rows.extend(zs)
                failed.extend(fs)
    width = max((row.size for row in rows), default=1)
    z = np.full((len(rows), width), -np.inf)
    for i, row in enumerate(rows):
        z[i, : row.size] = row
    return SurvivalSteps(z, np.array(failed, dtype=bool))


def estimate_survival(
    trials: Iterable[Trial], *, level: float = 0.95, t_min: float = 1e-6, t_max: float = 10.0
) -> EstimateResult[SurvivalDiagnostics]:
    """Batch estimate of T_bg from the pair survival likelihood, with a profile-likelihood
    interval {T : 2[ℓ(T̂) − ℓ(T)] <= χ²₁(level)}; with no scored divergence T̂ = 0 and a one-sided
    upper bound at 2[ℓ(0) − ℓ(T)] = χ²₁(2·level − 1) (ℓ(0) = 0 without exact ties)."""
    trials = list(trials)
    steps = survival_steps(trials)
    if steps.failed.size == 0:
        raise ValueError("no pair of runs reports top-k logprobs")
    n_trials = len(trials)
    pairs = sum(t.n_pairs for t in trials)
    diverged = int(steps.failed.sum())
    risk = int(steps.failed.size)
    u = np.linspace(np.log(t_min), np.log(t_max), _GRID_POINTS)
    ll = np.array([steps.loglik(float(np.exp(x))) for x in u])

    def f(x: float) -> float:
        return -steps.loglik(float(np.exp(x)))

    counts = Counts(n_trials, pairs, diverged, risk)

    def result(
        est: float, lower: float, upper: float, loglik_max: float, clipped: bool = False
    ) -> EstimateResult[SurvivalDiagnostics]:
        diag = SurvivalDiagnostics(counts, risk, loglik_max, clipped)
        return EstimateResult(est, lower, upper, level, "survival", diag)

    if diverged == 0:
        crit = float(stats.chi2.ppf(2 * level - 1, 1)) / 2
        top = float(ll[0]) - crit
        above = np.flatnonzero(ll < top)
        if above.size == 0:
            return result(0.0, 0.0, t_max, math.nan, clipped=True)
        j = int(above[0])
        r = optimize.brentq(lambda x: -f(x) - top, u[j - 1], u[j], xtol=1e-10)
        return result(0.0, 0.0, float(np.exp(r)), math.nan)
    i = int(np.argmax(ll))
    lo_u, hi_u = u[max(i - 1, 0)], u[min(i + 1, u.size - 1)]
    res = optimize.minimize_scalar(
        f, bounds=(lo_u, hi_u), method="bounded", options={"xatol": 1e-9}
    )
    u_hat = float(res.x) if -res.fun >= ll[i] else float(u[i])
    l_hat = max(-float(res.fun), float(ll[i]))
    thr = l_hat - float(stats.chi2.ppf(level, 1)) / 2

    def end(direction: int) -> float | None:
        j = int(np.searchsorted(u, u_hat))
        idx = range(j, u.size) if direction > 0 else range(j - 1, -1, -1)
        prev = u_hat
        for k in idx:
            if ll[k] < thr:
                return float(
                    optimize.brentq(
                        lambda x: -f(x) - thr, min(prev, u[k]), max(prev, u[k]), xtol=1e-10
                    )
                )
            prev = float(u[k])
        return None

    r_hi, r_lo = end(+1), end(-1)
    upper = t_max if r_hi is None else float(np.exp(r_hi))
    lower = 0.0 if r_lo is None else float(np.exp(r_lo))
    return result(float(np.exp(u_hat)), lower, upper, l_hat, clipped=r_hi is None)
