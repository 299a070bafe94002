"""Model-free statistics (science.md §2): they need no model of the noise; report them first.

Outputs are any hashable sequences (token tuples); ``groups`` are the outputs of one input each.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as st

from estimator.comparison import pair_divergence
from estimator.model import Run
from estimator.result import ConfidenceInterval, interval_at


def collision_rate(outputs: Sequence[Hashable]) -> float:
    """Unbiased exact-match probability of two distinct draws: Σ c_j(c_j−1) / (n(n−1))."""
    n = len(outputs)
    if n < 2:
        raise ValueError("need at least two outputs")
    c = np.array(list(Counter(outputs).values()), dtype=float)
    return float((c * (c - 1)).sum() / (n * (n - 1)))


def exact_match_rate(groups: Sequence[Sequence[Hashable]]) -> float:
    """Pooled U-statistic over inputs: matching pairs / pairs (inputs weighted by their pairs)."""
    num = den = 0.0
    for g in groups:
        c = np.array(list(Counter(g).values()), dtype=float)
        num += float((c * (c - 1)).sum())
        den += len(g) * (len(g) - 1)
    if den == 0:
        raise ValueError("no input has two outputs")
    return num / den


def tarr_at_n(groups: Sequence[Sequence[Hashable]], n: int) -> float:
    """TARr@N: share of inputs whose first N outputs are all identical (inputs with < N skipped)."""
    used = [g[:n] for g in groups if len(g) >= n]
    if not used:
        raise ValueError(f"no input has {n} outputs")
    return sum(len(set(g)) == 1 for g in used) / len(used)


def unique_completions(outputs: Sequence[Hashable]) -> int:
    return len(set(outputs))


def first_divergence(a: Sequence[Hashable], b: Sequence[Hashable]) -> int | None:
    """First index where the sequences differ (the shorter length if one is a prefix of the
    other), or None when they are equal."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


@dataclass(frozen=True)
class PairDivergences:
    """Per pair of runs: first divergence position (or censoring length), event, tokens at risk."""

    positions: np.ndarray
    diverged: np.ndarray
    at_risk: np.ndarray


def pairwise_first_divergences(runs: Sequence[Run]) -> PairDivergences:
    """All n(n−1)/2 pairs of one input (conventions of estimator.compare)."""
    out = [
        pair_divergence(runs[i], runs[j]) for i in range(len(runs)) for j in range(i + 1, len(runs))
    ]
    k, d, r = zip(*out, strict=True) if out else ((), (), ())
    return PairDivergences(np.array(k, int), np.array(d, bool), np.array(r, int))


@dataclass(frozen=True)
class KaplanMeier:
    """S(t) = P(the first t tokens of a pair agree), at each distinct event time t."""

    times: np.ndarray
    survival: np.ndarray
    at_risk: np.ndarray
    events: np.ndarray
    std_err: np.ndarray  # Greenwood


def kaplan_meier(durations: np.ndarray, events: np.ndarray) -> KaplanMeier:
    """Kaplan–Meier of the first divergence. ``durations``: tokens at risk (K+1 for a pair that
    diverged at index K; the length for a censored pair); ``events``: True when it diverged."""
    t = np.asarray(durations, dtype=float)
    e = np.asarray(events, dtype=bool)
    times = np.unique(t[e])
    at_risk = np.array([(t >= x).sum() for x in times], dtype=float)
    d = np.array([((t == x) & e).sum() for x in times], dtype=float)
    surv = np.cumprod(1 - d / at_risk)
    with np.errstate(divide="ignore", invalid="ignore"):
        green = np.cumsum(d / (at_risk * (at_risk - d)))
        se = np.where(surv > 0, surv * np.sqrt(green), 0.0)
    return KaplanMeier(times, surv, at_risk, d, se)


@dataclass(frozen=True)
class HazardRate:
    """Per-token divergence hazard λ = D/E with an exact Poisson (Garwood) interval."""

    estimate: float
    lower: float
    upper: float
    diverged: float
    tokens_at_risk: float
    level: float

    def confidence_interval(self, level: float | None = None) -> ConfidenceInterval:
        return interval_at(self.lower, self.upper, self.level, level, "hazard")

    def p_diverge(self, k: int) -> float:
        """P(a k-token answer diverges) ≈ 1 − exp(−λk)."""
        return float(-np.expm1(-self.estimate * k))


def garwood(count: float, level: float = 0.95) -> tuple[float, float]:
    """Exact Poisson interval for a count (non-integer counts from decayed sums are allowed)."""
    a = (1 - level) / 2
    lo = 0.0 if count <= 0 else float(st.chi2.ppf(a, 2 * count)) / 2
    hi = float(st.chi2.ppf(1 - a, 2 * count + 2)) / 2
    return lo, hi


def divergence_hazard(diverged: float, tokens_at_risk: float, level: float = 0.95) -> HazardRate:
    if tokens_at_risk <= 0:
        return HazardRate(np.nan, np.nan, np.nan, diverged, tokens_at_risk, level)
    lo, hi = garwood(diverged, level)
    e = tokens_at_risk
    return HazardRate(diverged / e, lo / e, hi / e, diverged, tokens_at_risk, level)


def clustered_hazard(
    diverged: float,
    tokens_at_risk: float,
    *,
    diverged_sq: float,
    diverged_x_risk: float,
    risk_sq: float,
    pairs_per_trial: float = 1.0,
    level: float = 0.95,
) -> HazardRate:
    """λ = D/E with the trial as the unit of independence: the pairs of one trial share runs, and
    divergence clusters by prompt, so D is not a Poisson count. From the per-trial sums Σ D_t²,
    Σ D_t·E_t, Σ E_t² the robust (ratio-estimator) variance of λ̂ is Σ (D_t − λ̂E_t)² / E²; the
    Garwood interval is taken for the effective count D_eff = D² / Σ (D_t − λ̂E_t)² (never above D)
    and scaled back, λ̂·[lo, hi]/D_eff. With D = 0 the exposure counts one pair per trial
    (E / pairs_per_trial): the replays of a trial that nobody saw diverge are not independent
    chances either. Sums may carry decay weights (first moments Σw·x, second Σw²·x)."""
    d, e = diverged, tokens_at_risk
    if e <= 0:
        return HazardRate(np.nan, np.nan, np.nan, d, e, level)
    if d <= 0:
        _, hi = garwood(0.0, level)
        return HazardRate(0.0, 0.0, hi * max(pairs_per_trial, 1.0) / e, d, e, level)
    lam = d / e
    resid = diverged_sq - 2 * lam * diverged_x_risk + lam * lam * risk_sq
    d_eff = d if resid <= 0 else min(d, d * d / resid)
    lo, hi = garwood(d_eff, level)
    return HazardRate(lam, lam * lo / d_eff, lam * hi / d_eff, d, e, level)


def memf(outputs: Sequence[Hashable]) -> float:
    """The paper's MEMF: count of the modal output / n."""
    return max(Counter(outputs).values()) / len(outputs)


def _encode(
    pairs: Sequence[tuple[Sequence[Hashable], Sequence[Hashable]]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    ids: dict[Hashable, int] = {}
    width = max((max(len(a), len(b)) for a, b in pairs), default=0)
    A = np.full((len(pairs), width), -1)
    B = np.full((len(pairs), width), -2)
    for p, (a, b) in enumerate(pairs):
        A[p, : len(a)] = [ids.setdefault(x, len(ids)) for x in a]
        B[p, : len(b)] = [ids.setdefault(x, len(ids)) for x in b]
    la = np.array([len(a) for a, _ in pairs])
    lb = np.array([len(b) for _, b in pairs])
    return A, B, la, lb


def edit_lengths(
    pairs: Sequence[tuple[Sequence[Hashable], Sequence[Hashable]]], lcs: bool
) -> np.ndarray:
    """Levenshtein distance (or, with ``lcs``, the longest common subsequence's length) of many
    pairs at once, vectorised over the pairs."""
    A, B, la, lb = _encode(pairs)
    n, w = A.shape
    prev = np.zeros((n, w + 1)) if lcs else np.tile(np.arange(w + 1.0), (n, 1))
    out = np.where(la == 0, 0.0 if lcs else lb, 0.0)
    for i in range(1, w + 1):
        cur = np.zeros((n, w + 1)) if lcs else np.full((n, w + 1), float(i))
        eq = A[:, i - 1, None] == B
        for j in range(1, w + 1):
            if lcs:
                cur[:, j] = np.where(
                    eq[:, j - 1], prev[:, j - 1] + 1, np.maximum(prev[:, j], cur[:, j - 1])
                )
            else:
                cur[:, j] = np.minimum(
                    np.minimum(prev[:, j], cur[:, j - 1]) + 1, prev[:, j - 1] + ~eq[:, j - 1]
                )
        hit = la == i
        out[hit] = cur[hit, lb[hit]]
        prev = cur
    return out


def index_pairs(n: int) -> list[tuple[int, int]]:
    """(i, j) for 0 <= i < j < n."""
    return [(i, j) for i in range(n) for j in range(i + 1, n)]


Pair = tuple[Sequence[Hashable], Sequence[Hashable]]


def _pairs(outputs: Sequence[Sequence[Hashable]]) -> list[Pair]:
    return [(outputs[i], outputs[j]) for i, j in index_pairs(len(outputs))]


def avg_lev(outputs: Sequence[Sequence[Hashable]], max_tokens: int) -> float:
    """The paper's AvgLev: mean pairwise token Levenshtein distance / max tokens."""
    return float(edit_lengths(_pairs(outputs), lcs=False).mean() / max_tokens)


def avg_lcs(outputs: Sequence[Sequence[Hashable]]) -> float:
    """The paper's AvgLCS: mean pairwise 1 − LCS / min length (0 for two empty outputs)."""
    pairs = _pairs(outputs)
    lcs = edit_lengths(pairs, lcs=True)
    m = np.array([min(len(a), len(b)) for a, b in pairs], dtype=float)
    longest = np.array([max(len(a), len(b)) for a, b in pairs], dtype=float)
    # min length 0: identical (both empty) -> 0, else nothing in common -> 1
    return float(np.where(m > 0, 1 - lcs / np.maximum(m, 1), (longest > 0) * 1.0).mean())
