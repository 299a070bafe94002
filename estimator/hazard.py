"""`hazard`: text-only estimate (science.md §3d). The per-token divergence hazard λ̂ = D/E
(exact Poisson interval) is converted to a temperature through a reference curve λ_ref(T)
measured on a reference system at known temperatures on the same kind of prompts:
T̂ = λ_ref⁻¹(λ̂). The result is relative to that reference (named in ``method``'s diagnostics).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from estimator.compare import compare_trial
from estimator.model import Trial
from estimator.result import Counts, EstimateResult
from estimator.stats import HazardRate, divergence_hazard


@dataclass(frozen=True)
class ReferenceCurve:
    """λ_ref(T) at increasing temperatures T > 0 (hazards must increase with T)."""

    name: str
    temperatures: tuple[float, ...]
    hazards: tuple[float, ...]

    def __post_init__(self) -> None:
        t, h = np.array(self.temperatures), np.array(self.hazards)
        if t.size < 2 or t.size != h.size or (t <= 0).any() or (h <= 0).any():
            raise ValueError("need >= 2 points with positive temperatures and hazards")
        if (np.diff(t) <= 0).any() or (np.diff(h) <= 0).any():
            raise ValueError("temperatures and hazards must both increase")

    def invert(self, hazard: float) -> float:
        """T with λ_ref(T) = hazard: linear in log-log (λ ∝ T near 0 for a smooth gap density),
        extrapolated with the end slopes; 0 for a zero hazard."""
        if not hazard > 0:
            return 0.0 if hazard == 0 else math.nan
        x, y = np.log(self.temperatures), np.log(self.hazards)
        v = math.log(hazard)
        if v < y[0]:
            i = 0
        elif v > y[-1]:
            i = len(y) - 2
        else:
            return float(np.exp(np.interp(v, y, x)))
        slope = (x[i + 1] - x[i]) / (y[i + 1] - y[i])
        return float(np.exp(x[i] + slope * (v - y[i])))


@dataclass(frozen=True)
class HazardDiagnostics:
    """The ``reference`` curve the temperature is relative to and the per-token ``hazard`` λ̂
    with its Garwood interval."""

    counts: Counts
    reference: str
    hazard: HazardRate

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": self.counts.to_dict(),
            "reference": self.reference,
            "hazard": self.hazard.estimate,
            "hazard_lower": self.hazard.lower,
            "hazard_upper": self.hazard.upper,
        }


def _hazard_counts(trials: Iterable[Trial]) -> Counts:
    n = pairs = div = risk = 0
    for t in trials:
        c = compare_trial(t, with_nodes=False)
        n, pairs, div, risk = n + 1, pairs + c.pairs, div + c.diverged, risk + c.tokens_at_risk
    return Counts(n, pairs, div, risk)


def reference_curve_from_trials(
    name: str, trials_by_temperature: Mapping[float, Sequence[Trial]]
) -> ReferenceCurve:
    """Measure λ_ref(T) on reference trials sampled at known temperatures (T > 0 only)."""
    pts = []
    for temp in sorted(trials_by_temperature):
        if temp > 0:
            c = _hazard_counts(trials_by_temperature[temp])
            d, e = c.diverged, c.tokens_at_risk
            if d > 0:
                pts.append((temp, d / e))
    t, h = zip(*pts, strict=True) if pts else ((), ())
    return ReferenceCurve(name, tuple(t), tuple(h))


def estimate_hazard(
    trials: Iterable[Trial], reference_curve: ReferenceCurve, *, level: float = 0.95
) -> EstimateResult[HazardDiagnostics]:
    """T̂ = λ_ref⁻¹(λ̂) with the Garwood interval of λ̂ mapped through the same curve (the
    curve's own sampling error is not included)."""
    counts = _hazard_counts(trials)
    hz = divergence_hazard(counts.diverged, counts.tokens_at_risk, level)
    inv = reference_curve.invert
    diag = HazardDiagnostics(counts, reference_curve.name, hz)
    return EstimateResult(inv(hz.estimate), inv(hz.lower), inv(hz.upper), level, "hazard", diag)
