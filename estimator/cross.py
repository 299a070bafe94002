"""Cross-divergence of two systems: how often the answer of one (a canary) differs from the answer
of the other (the fleet) to the same input, and what the Boltzmann model predicts for it.

- `wilson_interval`: the interval of a proportion whose unit is the input (one indicator per
  prompt: "the canary's answer differs from the fleet's"), sound at 0 and 1 and for small n.
- `cross_hazard`: at one position, the probability that a draw at temperature T_a and an
  independent draw at T_b from the same logits differ: 1 − Σ_i p_i(T_a)·p_i(T_b), with
  p(T) = softmax(z / T) over the reported top-k (renormalised; T = 0 is the argmax).
- `boltzmann_compensator`: the model check of a set of pairs. While two runs share a prefix, each
  next position diverges with probability h_s given the past, so D − Σ_{s at risk} h_s is a
  martingale: E[D] = E[Σ h_s] and Var(D − Σ h_s) = E[Σ h_s (1 − h_s)]. The positions at risk of a
  pair are those up to and including its first divergence (or its common length).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from estimator.model import Run


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of k successes in n independent units; (nan, nan) when n = 0."""
    if n <= 0:
        return math.nan, math.nan
    z = float(norm.ppf(0.5 + level / 2.0))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lower = 0.0 if k <= 0 else max(0.0, centre - half)
    upper = 1.0 if k >= n else min(1.0, centre + half)
    return lower, upper


def _tempered(logprobs: np.ndarray, t: float) -> np.ndarray:
    if t <= 0:
        out = np.zeros_like(logprobs)
        out[int(np.argmax(logprobs))] = 1.0
        return out
    z = logprobs / t
    z = z - z.max()
    w = np.exp(z)
    return np.asarray(w / w.sum())


def cross_hazard(logprobs: Sequence[float], t_a: float, t_b: float) -> float:
    """P(a draw at T_a differs from an independent draw at T_b) from one position's top-k raw
    logprobs (log softmax(z), before temperature)."""
    lp = np.asarray(logprobs, dtype=float)
    if lp.size == 0:
        return 0.0
    same = float(np.dot(_tempered(lp, t_a), _tempered(lp, t_b)))
    return min(1.0, max(0.0, 1.0 - same))


@dataclass(frozen=True, slots=True)
class CompensatorCheck:
    """Observed divergences of the pairs against the model's expectation."""

    pairs: int
    observed: int  # pairs that diverged
    expected: float  # Σ h_s over the positions at risk
    variance: float  # Σ h_s (1 − h_s)
    positions: int  # positions at risk that carried top-k logprobs

    @property
    def z(self) -> float:
        """(observed − expected) / sd; nan without variance."""
        if self.variance <= 0:
            return math.nan
        return (self.observed - self.expected) / math.sqrt(self.variance)


def _first_divergence(a: Run, b: Run) -> int | None:
    for s, (x, y) in enumerate(zip(a.tokens, b.tokens, strict=False)):
        if x != y:
            return s
    return None


def boltzmann_compensator(
    pairs: Iterable[tuple[Run, Run]], t_a: float, t_b: float
) -> CompensatorCheck:
    """The compensator check of pairs (run of system a, run of system b) of the same inputs, with
    the hazard read from the first run's top-k logprobs (raw, as vLLM and the reference report
    them). Positions without top-k logprobs are skipped (they add no expectation)."""
    n = observed = positions = 0
    expected = variance = 0.0
    for a, b in pairs:
        n += 1
        k = _first_divergence(a, b)
        if k is not None:
            observed += 1
        at_risk = (k + 1) if k is not None else min(len(a.tokens), len(b.tokens))
        tops = a.top_logprobs or ()
        for s in range(min(at_risk, len(tops))):
            top = tops[s]
            if not top:
                continue
            h = cross_hazard([lp for _, lp in top], t_a, t_b)
            expected += h
            variance += h * (1.0 - h)
            positions += 1
    return CompensatorCheck(n, observed, expected, variance, positions)
