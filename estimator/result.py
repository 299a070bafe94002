"""The result every estimator returns, in one shape (scipy-style): a frozen `EstimateResult` with
the ``estimate``, its confidence interval (``lower``, ``upper`` at the recorded ``level``, also as
`confidence_interval()`), the ``method`` and a typed, frozen diagnostics record of that method.

Missing values are NaN, never None: every number here is a float that flows into numpy arithmetic,
Prometheus gauges (which carry NaN natively) and JSON (where `measure.analysis.finite` and the
proxy's /tbg write it as null), so one float type keeps those paths free of None checks. A method
without an interval (`paper`) has ``lower``, ``upper`` and ``level`` NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar


@dataclass(frozen=True)
class ConfidenceInterval:
    """``low``..``high`` at confidence ``level`` (all NaN: the method gives no interval)."""

    low: float
    high: float
    level: float


@dataclass(frozen=True)
class Counts:
    """What an estimate was computed from: trials (one input and its runs), pairs of runs, pairs
    that diverged and tokens at risk (estimator.compare conventions)."""

    trials: int = 0
    pairs: int = 0
    diverged: int = 0
    tokens_at_risk: int = 0

    def to_dict(self) -> dict[str, int]:
        """The keys `tbg measure` writes next to an estimate."""
        return {
            "n_trials": self.trials,
            "pairs": self.pairs,
            "diverged": self.diverged,
            "tokens_at_risk": self.tokens_at_risk,
        }


def interval_at(
    lower: float, upper: float, computed: float, level: float | None, what: str
) -> ConfidenceInterval:
    """``lower``..``upper`` computed at level ``computed``, asked for at ``level`` (None: as
    computed). An interval is computed at one level; asking for another one raises ValueError
    rather than rescaling an interval that is not symmetric."""
    if level is not None and not (
        math.isnan(computed) or math.isclose(level, computed, rel_tol=1e-12)
    ):
        raise ValueError(
            f"{what} interval was computed at level {computed:g}; compute it again with "
            f"level={level:g}"
        )
    return ConfidenceInterval(lower, upper, computed)


class Diagnostics(Protocol):
    """A method's diagnostics record: frozen, typed fields, written to JSON by ``to_dict``."""

    def to_dict(self) -> dict[str, Any]: ...


D = TypeVar("D", bound=Diagnostics, covariant=True)


@dataclass(frozen=True)
class EstimateResult(Generic[D]):
    """An equivalent-temperature estimate.

    ``lower``/``upper`` bound a ``level`` confidence interval; with no divergence
    ``estimate == lower == 0`` and ``upper`` is one-sided.
    """

    estimate: float
    lower: float
    upper: float
    level: float
    method: str
    diagnostics: D

    def confidence_interval(self, level: float | None = None) -> ConfidenceInterval:
        """The interval at ``level`` (None: the level it was computed at, the estimator's
        ``level`` argument; another level raises ValueError, see `interval_at`)."""
        return interval_at(self.lower, self.upper, self.level, level, self.method)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN still to be mapped to null): the shape of `tbg measure`'s report."""
        d = self.diagnostics.to_dict()
        counts = d.pop("counts", None)
        return {
            "estimate": self.estimate,
            "lower": self.lower,
            "upper": self.upper,
            "method": self.method,
            "level": self.level,
            **(counts or {}),
            "diagnostics": d,
        }
