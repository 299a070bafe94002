"""`likelihood`: the Boltzmann likelihood on replay tries (science.md §3b).

ℓ(T) = Σ_nodes Σ_i c_i log softmax(ẑ/T)_i over trie nodes reached by >= 2 runs (see compare.py
for how ẑ and the tail are handled). In β = 1/T this is an exponential family, so ℓ is concave in
β: the MLE is the root of a monotone score and the profile interval has exactly two ends.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import optimize, stats

from estimator.compare import Nodes, compare_trial
from estimator.model import Trial
from estimator.result import EstimateResult

# exp(-_CUT) is below double precision relative to 1: gaps beyond _CUT·T do not move ℓ(T).
_CUT = 40.0


class Likelihood:
    """ℓ(β) and its score over a fixed set of nodes, skipping nodes that cannot matter at β."""

    def __init__(self, nodes: Nodes) -> None:
        g = nodes.gaps
        mins = g.min(1) if g.size else np.zeros(0)
        order = np.argsort(mins, kind="stable")
        self.gaps = g[order]
        self.gaps0 = np.where(np.isfinite(self.gaps), self.gaps, 0.0)  # for g·e without inf·0
        self.mins = mins[order]
        self.w = nodes.weights[order]
        self.linear = nodes.linear
        # ℓ at T -> 0: only exact ties (gap 0) keep mass next to the argmax.
        self.l_inf = -float(self.w @ np.log1p((g[order] == 0).sum(1))) if g.size else 0.0

    def _rows(self, beta: float) -> int:
        return int(np.searchsorted(self.mins, _CUT / beta, side="right"))

    def loglik(self, beta: float) -> float:
        n = self._rows(beta)
        e = np.exp(-beta * self.gaps[:n])
        return float(-beta * self.linear - self.w[:n] @ np.log1p(e.sum(1)))

    def score(self, beta: float) -> float:
        """dℓ/dβ, decreasing in β."""
        n = self._rows(beta)
        e = np.exp(-beta * self.gaps[:n])
        s1 = (self.gaps0[:n] * e).sum(1)
        return float(-self.linear + self.w[:n] @ (s1 / (1.0 + e.sum(1))))


def loglik_grid(nodes: Nodes, grid: np.ndarray) -> np.ndarray:
    """ℓ(T) at each grid temperature (used per update by the online estimator).

    Only (node, T) combinations where the node's smallest gap is below 40·T are evaluated; the
    others contribute less than e^−40 relative and are skipped."""
    grid = np.asarray(grid, dtype=float)
    out = -nodes.linear / grid
    g = nodes.gaps
    if nodes.weights.size == 0:
        return out
    mins = g.min(1)
    live = mins < _CUT * grid.max()
    g, w, mins = g[live], nodes.weights[live], mins[live]
    order = np.argsort(mins)
    g, w = g[order], w[order]
    counts = np.searchsorted(mins[order], _CUT * grid, side="right")
    total = int(counts.sum())
    if total == 0:
        return out
    gi = np.repeat(np.arange(grid.size), counts)
    rows = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    e = np.exp(g[rows] * (-1.0 / grid)[gi, None])
    contrib = np.log1p(e.sum(1)) * w[rows]
    return np.asarray(out - np.bincount(gi, contrib, minlength=grid.size), dtype=float)


def fit(
    nodes: Nodes, *, level: float = 0.95, t_min: float = 1e-6, t_max: float = 10.0
) -> tuple[float, float, float, dict[str, float | int | str]]:
    """(T̂, lower, upper, diagnostics) by maximum likelihood with a profile-likelihood interval."""
    lk = Likelihood(nodes)
    b_lo, b_hi = 1.0 / t_max, 1.0 / t_min
    diag: dict[str, float | int | str] = {"nodes": int(nodes.weights.size)}
    if lk.linear <= 0.0:
        # Nothing scored diverged: ℓ increases towards T = 0; one-sided bound at 2Δℓ = χ²₁(2L−1).
        crit = float(stats.chi2.ppf(2 * level - 1, 1)) / 2
        top = lk.l_inf
        if lk.loglik(b_lo) >= top - crit:
            diag["upper_at_t_max"] = 1
            return 0.0, 0.0, t_max, diag
        f = lambda u: lk.loglik(np.exp(u)) - (top - crit)  # noqa: E731
        b_u = float(np.exp(optimize.brentq(f, np.log(b_lo), np.log(b_hi), xtol=1e-10)))
        return 0.0, 0.0, 1.0 / b_u, diag
    crit = float(stats.chi2.ppf(level, 1)) / 2
    s_lo, s_hi = lk.score(b_lo), lk.score(b_hi)
    if s_lo <= 0:
        b_hat = b_lo
        diag["estimate_at_t_max"] = 1
    elif s_hi >= 0:
        b_hat = b_hi
    else:
        b_hat = float(
            np.exp(optimize.brentq(lambda u: lk.score(np.exp(u)), np.log(b_lo), np.log(b_hi)))
        )
    top = lk.loglik(b_hat)
    thr = top - crit

    def g(u: float) -> float:
        return lk.loglik(float(np.exp(u))) - thr

    u_hat = np.log(b_hat)
    upper = t_max if g(np.log(b_lo)) >= 0 else 1.0 / np.exp(optimize.brentq(g, np.log(b_lo), u_hat))
    lower = 0.0 if g(np.log(b_hi)) >= 0 else 1.0 / np.exp(optimize.brentq(g, u_hat, np.log(b_hi)))
    diag["loglik_max"] = top
    return 1.0 / b_hat, float(lower), float(upper), diag


def estimate_likelihood(
    trials: Iterable[Trial], *, level: float = 0.95, t_max: float = 10.0
) -> EstimateResult:
    """Batch Boltzmann-likelihood estimate of T_bg from trials that carry top-k logprobs."""
    parts, n, pairs, div, risk = [], 0, 0, 0, 0
    for t in trials:
        c = compare_trial(t)
        n, pairs, div, risk = n + 1, pairs + c.pairs, div + c.diverged, risk + c.tokens_at_risk
        if c.nodes is not None:
            parts.append(c.nodes)
    nodes = Nodes.concat(parts)
    if nodes.weights.size == 0:
        raise ValueError("no trie node is reached by two runs that report top-k logprobs")
    est, lo, hi, diag = fit(nodes, level=level, t_max=t_max)
    diag["tail_choices"] = nodes.tail_choices
    diag["min_k"] = nodes.min_k
    return EstimateResult(est, lo, hi, "likelihood", level, n, pairs, div, risk, diag)
