"""`likelihood`: the Boltzmann likelihood on replay tries (science.md §3b).

ℓ(T) = Σ_nodes Σ_i c_i log softmax(ẑ/T)_i over trie nodes reached by >= 2 runs (see compare.py
for how ẑ and the tail are handled). In β = 1/T this is an exponential family, so ℓ is concave in
β: the MLE is the root of a monotone score and the profile interval has exactly two ends.

The trial (one prompt and its runs) is the unit of independence: `estimate_likelihood` multiplies
the profile's drops by the sandwich design effect k = [n/(n − 1)]·Σ_t (s_t − s̄)² / H of the n
trials' scores s_t at β̂ over the observed information H (estimator/profile.py has the same on the
grid), and its small-count correction counts trials that diverged. `bootstrap_prompts` resamples
trials instead, for a check of the interval's implied spread.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from scipy import optimize, stats

from estimator.compare import compare_trial
from estimator.model import Trial
from estimator.nodes import Nodes
from estimator.profile import upper_drop
from estimator.result import ConfidenceInterval, Counts, EstimateResult, interval_at

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

    Only the live (node, T) combinations are computed: those where the node's smallest gap is
    below 40·T. A skipped combination adds log(1 + Σ e^{−g/T}) < (k−1)·e^{−40} ≈ (k−1)·4e−18 per
    choice, below double precision next to the 1 inside the logarithm (so ℓ at that T loses at
    most (k−1)·4e−18 per scored choice in absolute terms). The live combinations form a staircase
    (node v is live from its first live column to the end of the grid); they are laid out flat,
    one row of k−1 gaps per combination, and summed per column with one bincount, so no work is
    spent on dead combinations. Exponents are clipped at −700 before exp (e^−700 ≈ 1e−304 is below
    double precision next to a live gap's e^−40 and keeps exp off its slow underflow path)."""
    return -GridLoglik(grid).nll(nodes)


class GridLoglik:
    """`loglik_grid` on one fixed grid, with the per-grid constants computed once (the online
    estimator keeps one): ``nll(nodes)`` = −ℓ on the grid, the same numbers as
    −loglik_grid(nodes, grid)."""

    def __init__(self, grid: np.ndarray) -> None:
        self.grid = np.asarray(grid, dtype=float)
        self._cut = _CUT * self.grid
        self._neg_inv = -1.0 / self.grid
        self._arange = np.arange(self.grid.size * 256)

    def _ar(self, n: int) -> np.ndarray:
        if self._arange.size < n:
            self._arange = np.arange(2 * n)
        return self._arange[:n]

    def nll(self, nodes: Nodes) -> np.ndarray:
        grid = self.grid
        lin = nodes.linear / grid  # −ℓ = linear/T + Σ_v w_v log(1 + Σ_j e^{−g_vj/T})
        w = nodes.weights
        if w.size == 0:
            return np.asarray(lin, dtype=float)
        gt = np.ascontiguousarray(nodes.gaps.T)  # (k−1, nodes): reductions over rows are fast
        first = np.searchsorted(self._cut, gt.min(0), side="right")  # first live column per node
        cnt = grid.size - first  # dead nodes (first == grid size) get no combination
        ends = np.cumsum(cnt)
        total = int(ends[-1])
        if total == 0:
            return np.asarray(lin, dtype=float)
        rows = np.repeat(self._ar(first.size), cnt)
        # column of each flat combination: first[v] + (offset within node v's run)
        cols = self._ar(total) + np.repeat(first - ends + cnt, cnt)
        x = gt.take(rows, axis=1)  # (k−1, combinations)
        x *= self._neg_inv.take(cols)  # inf gaps give −inf
        np.maximum(x, -700.0, out=x)
        np.exp(x, out=x)
        s = np.add.reduce(x, axis=0)  # row by row, in order
        np.log1p(s, out=s)
        s *= w.take(rows)
        return np.bincount(cols, weights=s, minlength=grid.size) + lin


def loglik_grid_reference(nodes: Nodes, grid: np.ndarray) -> np.ndarray:
    """Straightforward ℓ(T) on the grid, node by node and T by T (no skipping): the reference
    that tests hold `loglik_grid` to."""
    grid = np.asarray(grid, dtype=float)
    out = np.empty(grid.size)
    for j, t in enumerate(grid):
        total = -nodes.linear / t
        for v in range(nodes.weights.size):
            total -= nodes.weights[v] * np.log1p(np.exp(-nodes.gaps[v] / t).sum())
        out[j] = total
    return out


def _root(f: Callable[[float], float], u0: float, step: float, stop: float) -> float | None:
    """Root in u = log β of a function that changes sign once, scanning from u0 (f(u0) has the
    sign that holds on that side) by ``step`` until the sign flips, then Brent. Scanning from
    large β keeps the evaluations cheap (few nodes matter at small T). None: no flip up to stop."""
    f0 = f(u0)
    u = u0
    while True:
        nxt = u + step
        if (step < 0 and nxt < stop) or (step > 0 and nxt > stop):
            nxt = stop
        fn = f(nxt)
        if (fn > 0) != (f0 > 0):
            return float(optimize.brentq(f, min(u, nxt), max(u, nxt), xtol=1e-10))
        if nxt == stop:
            return None
        u = nxt


def design_effect(parts: list[Nodes], beta: float) -> float:
    """k = max(1, [n/(n − 1)]·Σ_t (s_t − s̄)² / H) at β (the MLE of the pooled nodes): s_t each
    trial's score dℓ_t/dβ, H = −dℓ'/dβ of the pooled curve (central difference). 1 when it cannot
    be read (fewer than two trials, H not positive). Invariant under reparametrisation at the MLE,
    so it is the same number the grid profile reads in log T."""
    parts = [p for p in parts if p.weights.size or p.linear]
    n = len(parts)
    if n < 2 or not (beta > 0 and math.isfinite(beta)):
        return 1.0
    s = np.array([Likelihood(p).score(beta) for p in parts])
    lk = Likelihood(Nodes.concat(parts))
    eps = 1e-4
    h = (lk.score(beta * (1 - eps)) - lk.score(beta * (1 + eps))) / (2 * eps * beta)
    if not h > 0:
        return 1.0
    k = n / (n - 1) * float(((s - s.mean()) ** 2).sum()) / h
    return max(1.0, k) if math.isfinite(k) else 1.0


@dataclass(frozen=True)
class LikelihoodDiagnostics:
    """What a likelihood fit rests on. ``nodes``: scored trie nodes; ``tail_choices``: choices
    outside the reported tokens (not scored); ``min_k``: the smallest number of reported tokens
    at a node; ``loglik_max``: ℓ(T̂) (NaN when nothing diverged: then the interval is read from
    ℓ(T -> 0)); ``estimate_at_t_max``/``upper_at_t_max``: the estimate or the upper end was
    clipped to t_max; ``design_effect``: the trial-level multiplier of both drops (1: positions
    treated as independent); ``events``: the divergences behind the small-count correction (NaN:
    none applied, the asymptotic upper end). From trials (`estimate_likelihood`) also the
    ``counts``, the scored trials, those of them that diverged, and ``unit`` "trial" (a fit on
    bare nodes counts no trials: zeros, unit "position")."""

    nodes: int
    tail_choices: int
    min_k: int
    loglik_max: float
    estimate_at_t_max: bool
    upper_at_t_max: bool
    design_effect: float
    events: float
    counts: Counts = field(default_factory=Counts)
    diverged_trials: int = 0
    scored_trials: int = 0
    unit: str = "position"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "counts": self.counts.to_dict()}


def mle(nodes: Nodes, *, t_min: float = 1e-6, t_max: float = 10.0) -> float:
    """T̂ alone (0 when nothing diverged, t_max when the score has no root below it)."""
    lk = Likelihood(nodes)
    if lk.linear <= 0.0:
        return 0.0
    r = _root(lambda u: lk.score(np.exp(u)), -np.log(t_min), -np.log(2.0), -np.log(t_max))
    return t_max if r is None else float(np.exp(-r))


def fit(
    nodes: Nodes,
    *,
    level: float = 0.95,
    t_min: float = 1e-6,
    t_max: float = 10.0,
    events: float | None = None,
    design: float = 1.0,
) -> EstimateResult[LikelihoodDiagnostics]:
    """T̂ by maximum likelihood with a profile-likelihood interval {T : 2[ℓ(T̂) − ℓ(T)] <=
    χ²₁(level)}; with no scored divergence T̂ = 0 and lower 0. Given `events` (the number of
    divergences behind the nodes), the upper end gets the small-count correction of
    estimator.profile (as the live and pooled intervals do); without it the upper end is the
    asymptotic one (one-sided χ²₁(2·level − 1) when nothing diverged): the textbook interval the
    grid reading is checked against. `design` (the trial-level design effect, >= 1) multiplies
    both drops. Ends beyond [t_min, t_max] are clipped (lower 0, upper t_max, flagged in the
    diagnostics)."""
    lk = Likelihood(nodes)
    u_lo, u_hi = -np.log(t_max), -np.log(t_min)  # u = log β
    step = np.log(2.0)
    diag = LikelihoodDiagnostics(
        nodes=int(nodes.weights.size),
        tail_choices=nodes.tail_choices,
        min_k=nodes.min_k,
        loglik_max=math.nan,
        estimate_at_t_max=False,
        upper_at_t_max=False,
        design_effect=design,
        events=math.nan if events is None else float(events),
    )

    def result(
        est: float, lower: float, upper: float, d: LikelihoodDiagnostics
    ) -> EstimateResult[LikelihoodDiagnostics]:
        return EstimateResult(est, lower, upper, level, "likelihood", d)

    if lk.linear <= 0.0:
        crit = design * (
            float(stats.chi2.ppf(2 * level - 1, 1)) / 2
            if events is None
            else upper_drop(0.0, level)
        )
        thr0 = lk.l_inf - crit
        r = _root(lambda u: lk.loglik(np.exp(u)) - thr0, u_hi, -step, u_lo)
        if r is None:
            return result(0.0, 0.0, t_max, replace(diag, upper_at_t_max=True))
        return result(0.0, 0.0, float(np.exp(-r)), diag)
    crit = design * float(stats.chi2.ppf(level, 1)) / 2
    r = _root(lambda u: lk.score(np.exp(u)), u_hi, -step, u_lo)
    if r is None:
        diag = replace(diag, estimate_at_t_max=True)
        u_hat = u_lo
    else:
        u_hat = r
    top = lk.loglik(float(np.exp(u_hat)))
    thr = top - crit
    thr_up = thr if events is None else top - design * upper_drop(events, level)

    def g(u: float) -> float:
        return lk.loglik(float(np.exp(u))) - thr

    def g_up(u: float) -> float:
        return lk.loglik(float(np.exp(u))) - thr_up

    r_up = _root(g_up, u_hat, -step, u_lo)  # towards higher T
    r_lo = _root(g, u_hat, step, u_hi)  # towards lower T
    upper = t_max if r_up is None else float(np.exp(-r_up))
    lower = 0.0 if r_lo is None else float(np.exp(-r_lo))
    return result(float(np.exp(-u_hat)), lower, upper, replace(diag, loglik_max=thr + crit))


@dataclass(frozen=True)
class TrialNodes:
    """Each scored trial's likelihood nodes (trials without top-k logprobs left out), the counts
    over all trials and the number of scored trials that diverged."""

    parts: tuple[Nodes, ...]
    counts: Counts
    diverged_trials: int


def trial_nodes(trials: Iterable[Trial]) -> TrialNodes:
    """The likelihood nodes of each trial (see `TrialNodes`)."""
    parts: list[Nodes] = []
    n = pairs = diverged = risk = diverged_trials = 0
    for t in trials:
        c = compare_trial(t)
        n, pairs, diverged, risk = (
            n + 1,
            pairs + c.pairs,
            diverged + c.diverged,
            risk + c.tokens_at_risk,
        )
        if c.nodes is not None and c.nodes.weights.size:
            parts.append(c.nodes)
            diverged_trials += c.diverged > 0
    return TrialNodes(tuple(parts), Counts(n, pairs, diverged, risk), diverged_trials)


def estimate_likelihood(
    trials: Iterable[Trial], *, level: float = 0.95, t_max: float = 10.0
) -> EstimateResult[LikelihoodDiagnostics]:
    """Batch Boltzmann-likelihood estimate of T_bg from trials that carry top-k logprobs, with the
    trial as the unit of independence (module docstring): the interval is the profile's with both
    drops times the design effect (diagnostics `design_effect`), the small-count correction on
    the trials that diverged (`diverged_trials`)."""
    tn = trial_nodes(trials)
    parts = list(tn.parts)
    nodes = Nodes.concat(parts)
    if nodes.weights.size == 0:
        raise ValueError("no trie node is reached by two runs that report top-k logprobs")
    events = float(tn.diverged_trials)
    est = mle(nodes, t_max=t_max)
    k = design_effect(parts, 1.0 / est) if 0 < est < t_max else 1.0
    r = fit(nodes, level=level, t_max=t_max, events=events, design=k)
    diag = replace(
        r.diagnostics,
        counts=tn.counts,
        diverged_trials=tn.diverged_trials,
        scored_trials=len(parts),
        unit="trial",
    )
    return replace(r, diagnostics=diag)


@dataclass(frozen=True)
class BootstrapInterval:
    """The percentile interval (``lower``, ``upper`` at ``level``) of T̂ over ``resamples``
    resamples of the trials, ``sd_log`` the SD of log T̂ over the resamples with T̂ > 0 (NaN with
    fewer than three) and ``zero_share`` the share of resamples with nothing diverged."""

    lower: float
    upper: float
    level: float
    sd_log: float
    zero_share: float
    resamples: int

    def confidence_interval(self, level: float | None = None) -> ConfidenceInterval:
        return interval_at(self.lower, self.upper, self.level, level, "bootstrap")

    def to_dict(self) -> dict[str, float]:
        """The keys `tbg measure` writes (level beside them)."""
        return {
            "lower": self.lower,
            "upper": self.upper,
            "sd_log": self.sd_log,
            "zero_share": self.zero_share,
            "resamples": float(self.resamples),
        }


def bootstrap_prompts(
    parts: list[Nodes], *, resamples: int = 400, seed: int = 0, level: float = 0.95
) -> BootstrapInterval:
    """Bootstrap over trials (prompts): T̂ on `resamples` resamples of the trials with
    replacement (see `BootstrapInterval`). It covers the variation of the prompts as sampled, not
    a change of prompt mix."""
    rng = np.random.default_rng(seed)
    n = len(parts)
    if n < 2:
        raise ValueError("a bootstrap over prompts needs at least two prompts with logprobs")
    est = np.array(
        [mle(Nodes.concat([parts[i] for i in rng.integers(0, n, n)])) for _ in range(resamples)]
    )
    pos = est[est > 0]
    a = (1 - level) / 2
    return BootstrapInterval(
        lower=float(np.quantile(est, a)),
        upper=float(np.quantile(est, 1 - a)),
        level=level,
        sd_log=float(np.std(np.log(pos), ddof=1)) if pos.size > 2 else math.nan,
        zero_share=float(np.mean(est <= 0)),
        resamples=resamples,
    )
