"""The result every estimator returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class EstimateResult:
    """An equivalent-temperature estimate.

    ``lower``/``upper`` bound a ``level`` confidence interval (NaN when the method has none, as
    for `paper`); with no divergence ``estimate == lower == 0`` and ``upper`` is one-sided.
    """

    estimate: float
    lower: float
    upper: float
    method: str
    level: float
    n_trials: int
    pairs: int
    diverged: int
    tokens_at_risk: int
    diagnostics: Mapping[str, float | int | str] = field(default_factory=dict)
