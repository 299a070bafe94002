"""`jitter`: logprob-gap noise (science.md §3c). Every shared position counts.

δ_s = (Δ_s^A − Δ_s^B), the difference between two runs of the gap between the reference top-1
and top-2 tokens at a position both runs reached with the same prefix. A deterministic stack
reports bit-identical logprobs there (δ = 0). σ̂_Δ² = Σ δ² / (2N) estimates the noise variance of
one run's gap (identical positions included; p₀ = their share is reported beside it).

Mapping to a temperature is not unique (Gaussian noise is not Gumbel noise). We match the
divergence hazard over near-ties with a flat gap density f(0): Boltzmann gives λ = f(0)·T, gap
noise gives λ = f(0)·σ_Δ·2∫₀^∞Φ(u)Φ(−u)du = f(0)·σ_Δ/√π, so T_jitter = σ_Δ/√π ≈ 0.564 σ_Δ (the
exact-tie slope match would give 0.627 σ_Δ). The model check compares observed divergences with
Σ 2q(1−q), q = Φ(−|Δ̂_s|/σ̂_Δ), over the same positions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as st

from estimator.compare import compare_trial
from estimator.model import Trial
from estimator.result import Counts, EstimateResult


@dataclass(frozen=True)
class JitterDiagnostics:
    """σ̂_Δ and its interval (``sigma_gap*``), p₀ (``p_identical``), the positions compared and
    their trial-level effective number, and the model check: predicted against observed pair
    divergences, ``check_z`` = (observed − predicted)/√predicted (NaN when nothing is predicted).
    """

    counts: Counts
    sigma_gap: float
    sigma_gap_lower: float
    sigma_gap_upper: float
    p_identical: float
    positions: int
    effective_positions: float
    predicted_divergences: float
    observed_divergences: int
    check_z: float
    unit: str = "trial"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "counts": self.counts.to_dict()}


def sigma_to_temperature(sigma_gap: float) -> float:
    """Equivalent temperature of a gap noise sd σ_Δ (hazard matching, see module doc)."""
    return sigma_gap / math.sqrt(math.pi)


def predicted_divergences(gaps: np.ndarray, sigma_gap: float) -> float:
    """Expected number of pair divergences over positions with reference gaps ``gaps``."""
    if sigma_gap <= 0:
        return 0.0
    q = st.norm.cdf(-np.abs(gaps) / sigma_gap)
    return float((2 * q * (1 - q)).sum())


def estimate_jitter(
    trials: Iterable[Trial], *, level: float = 0.95
) -> EstimateResult[JitterDiagnostics]:
    """Jitter σ_Δ, p₀, the mapped temperature and the divergence model check. The interval has the
    trial as its unit: χ² on the effective number of positions N_eff = N·(χ² variance of σ̂²)/(robust
    variance of the ratio Σδ²/ΣN over trials), at most N (positions of one trial share a batch
    shape, so bit-identical and perturbed positions come in blocks)."""
    sq = 0.0
    pos = ident = n = pairs = div = risk = 0
    gaps: list[np.ndarray] = []
    per_trial: list[tuple[float, int]] = []
    for t in trials:
        c = compare_trial(t, with_nodes=False)
        if c.jitter_positions:
            per_trial.append((c.jitter_sq_sum, c.jitter_positions))
        sq, pos, ident = (
            sq + c.jitter_sq_sum,
            pos + c.jitter_positions,
            ident + c.jitter_identical_positions,
        )
        n, pairs, div, risk = n + 1, pairs + c.pairs, div + c.diverged, risk + c.tokens_at_risk
        gaps.append(c.jitter_gaps)
    if pos == 0:
        raise ValueError("no position shared by two runs that report top-k logprobs")
    sigma = math.sqrt(sq / (2 * pos))
    a = (1 - level) / 2
    # Σδ²/(2σ²) ~ χ²_N for Gaussian δ with variance 2σ² and independent positions: var(σ̂²) =
    # 2σ⁴/N. The robust (trial-level) variance of the ratio r = Σ q_t / Σ N_t is
    # Σ (q_t − r·N_t)² / (ΣN)², q_t = Σδ²/2 of trial t; N_eff matches the two.
    q = np.array([x / 2 for x, _ in per_trial])
    m = np.array([float(k) for _, k in per_trial])
    r = sigma * sigma
    robust = float(((q - r * m) ** 2).sum()) / float(m.sum()) ** 2 if q.size > 1 else 0.0
    n_eff = float(pos)
    if robust > 0 and r > 0:
        n_eff = min(float(pos), max(1.0, 2 * r * r / robust))
    s_lo = math.sqrt(sq / pos * n_eff / (2 * float(st.chi2.ppf(1 - a, n_eff))))
    s_hi = math.sqrt(sq / pos * n_eff / (2 * float(st.chi2.ppf(a, n_eff))))
    pred = predicted_divergences(np.concatenate(gaps), sigma)
    diag = JitterDiagnostics(
        counts=Counts(n, pairs, div, risk),
        sigma_gap=sigma,
        sigma_gap_lower=s_lo,
        sigma_gap_upper=s_hi,
        p_identical=ident / pos,
        positions=pos,
        effective_positions=n_eff,
        predicted_divergences=pred,
        observed_divergences=div,
        check_z=(div - pred) / math.sqrt(pred) if pred > 0 else math.nan,
    )
    return EstimateResult(
        sigma_to_temperature(sigma),
        sigma_to_temperature(s_lo),
        sigma_to_temperature(s_hi),
        level,
        "jitter",
        diag,
    )
