"""Profile-likelihood intervals from a log-likelihood known only on a log-spaced grid.

The online state and the Prometheus counters hold Σ −ℓ(T_g) at grid temperatures T_g equally spaced
in x = log T (step h). In x the profile is smooth on the scale of the grid (a cubic spline through
the grid values reproduces the exact interval ends to about 1 % of the half-width at 64 points, even
at 8,000 pairs), while linear interpolation between grid values always lands inside a convex curve's
crossing: intervals too short, worse with more data, and the source of the under-coverage of the
first version. So each end is read off a local parabola:

* every grid point i (not on the edge) carries the parabola through its two neighbours,
  p_i(t) = f_i + b_i·t + a_i·t², t = (x − x_i)/h, b_i = (f_{i+1} − f_{i−1})/2,
  a_i = (f_{i+1} − 2f_i + f_{i−1})/2;
* the estimate is the vertex of the parabola at the grid minimum, with the minimum value m;
* an end is the root of p_i(t) = m + c read from the grid points next to the crossing: a cell
  vouches for roots within ROOT_WINDOW = 0.75 steps of its point, and where two cells claim a
  crossing the outer root wins (the two agree to a small fraction of a step). With no divergence
  T̂ = 0, the lower end is 0 and the upper end is read above f at the smallest grid temperature.

The drops c. Lower end: c = χ²₁(level)/2, the asymptotic likelihood-ratio threshold. Upper end: the
same plus a small-count correction. Divergences are rare events, and with k of them the likelihood
behaves like a Poisson count's; there the asymptotic threshold is known to cut the upper end too
low (with k = 0 it gives the "rule of 1.35" where the exact one-sided bound is the rule of three;
measured: 80 % coverage on data sets with 0–2 divergences). The upper drop is the one at which the
Poisson likelihood ratio reaches the mid-p upper confidence limit of a Poisson mean (Lancaster) for
k events, which tends to χ²₁(level) as k grows; in closed form (so the recording rules can compute
it) 2c_up(k) = χ²₁(level) + A/(k + B)^Q, B and Q fitted to the exact mid-p values at level 0.95
(within 0.003 for k = 0…500) and A anchored so that k = 0 gives the exact 2·ln(1/(1 − level)).

The trial as the unit of independence. Σ −ℓ treats every scored position as an independent
observation, but the positions and pairs of one trial (a request and its replays) are not: a replay
that meets its primary's batch shape reproduces it bit for bit, and prompts differ in sensitivity.
The curvature of the summed curve then understates the estimate's variance, and more data does not
help. So both drops are multiplied by a design effect read off the same additive statistics, the
robust (sandwich, composite-likelihood) variance of the trial-level estimating equation over the
model-based one:

    k = [n/(n − 1)] · Σ_t (s_t − s̄)² / H,

s_t the slope of trial t's −ℓ in log T at the grid point of the minimum, s̄ their mean, H the
curvature of Σ −ℓ there (Chandler & Bate's magnitude adjustment of the likelihood ratio). Σ_t s_t²
per grid point adds up over trials, replicas and windows like Σ −ℓ does, so the pooled rules compute
k in PromQL too (Σ_t (s_t − s̄)² = Σ s_t² − (Σ s_t)²/n, and Σ s_t is the summed curve's own slope).
k is floored at 1 (MIN_DESIGN_EFFECT; under decay Σw²/Σw, the model-based value): under the
Boltzmann model with independent trials k → 1, and its noise on few trials would otherwise narrow
the interval half the time. The small-count
correction counts independent events: trials that diverged, not pairs.

The recording rules (deploy/prometheus/rules_gen.py) do the same arithmetic in PromQL on the pooled
counters with a static neighbour map, so /tbg, the gauges and the fleet's rules agree; `grid_profile`
is the reference the rule tests compare against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as st

from estimator.result import ConfidenceInterval, interval_at

__all__ = [
    "MIN_DESIGN_EFFECT",
    "ROOT_WINDOW",
    "Profile",
    "critical_values",
    "design_effect",
    "grid_profile",
    "parabolas",
    "scores",
    "small_count",
    "upper_drop",
]

# A cell vouches for roots up to 0.75 grid steps from its point, not only its own half step: two
# neighbouring parabolas disagree slightly at their shared edge, and with a window of exactly ½ a root
# can fall between them and be claimed by neither (an interval end lost to the grid edge).
ROOT_WINDOW = 0.75


# The design effect never narrows the model-based interval (module docstring).
MIN_DESIGN_EFFECT = 1.0

# Shape of the small-count correction (module docstring): fitted to the mid-p Poisson limits.
SMALL_COUNT_B = 0.2303
SMALL_COUNT_Q = 0.568


def critical_values(level: float) -> tuple[float, float]:
    """(two-sided, one-sided) drops of the log-likelihood: χ²₁(level)/2 and χ²₁(2·level − 1)/2."""
    return float(st.chi2.ppf(level, 1)) / 2, float(st.chi2.ppf(2 * level - 1, 1)) / 2


def small_count(level: float) -> tuple[float, float, float, float]:
    """(c, a, b, q) with the upper end's drop c + a/(k + b)^q for k divergences (halved: drops of
    the log-likelihood, not of 2Δℓ). The recording rules write these numbers into PromQL."""
    chi = float(st.chi2.ppf(level, 1))
    at_zero = 2 * math.log(1 / (1 - level))
    a = (at_zero - chi) * SMALL_COUNT_B**SMALL_COUNT_Q
    return chi / 2, a / 2, SMALL_COUNT_B, SMALL_COUNT_Q


def upper_drop(events: float, level: float = 0.95) -> float:
    """The upper end's drop of the log-likelihood after k = `events` divergences."""
    c, a, b, q = small_count(level)
    return c + a / float((max(events, 0.0) + b) ** q)


@dataclass(frozen=True)
class Profile:
    """`grid_profile`'s reading: the estimate and its ``level`` interval on the grid."""

    estimate: float
    lower: float
    upper: float
    design_effect: float = 1.0  # k: the drops' multiplier (1: no trial-level statistics given)
    level: float = 0.95

    def confidence_interval(self, level: float | None = None) -> ConfidenceInterval:
        return interval_at(self.lower, self.upper, self.level, level, "grid profile")


def scores(grid: np.ndarray, nll: np.ndarray) -> np.ndarray:
    """Slope of one trial's −ℓ in log T at each grid point (central differences; one-sided on the
    two edges): the trial's score, whose square the online state sums per grid point."""
    f = np.asarray(nll, dtype=float)
    x = np.log(np.asarray(grid, dtype=float))
    return np.asarray(np.gradient(f, x), dtype=float)


def design_effect(
    nll: np.ndarray, score_sq: np.ndarray, i: int, h: float, n: float, n_sq: float | None = None
) -> float:
    """k at grid point i (module docstring) from Σ −ℓ, Σ_t s_t² and n trials on a grid of step h
    in log T; ``n_sq`` = Σ w_t² when the trials carry decay weights w_t (then Σ −ℓ, the slope and
    the squares are the weighted sums Σ w·(−ℓ_t), Σ w·s_t and Σ w²·s_t², n = Σ w). 1 where it cannot be
    read (edge point, not convex there, fewer than two trials)."""
    f = np.asarray(nll, dtype=float)
    w2 = n if n_sq is None else n_sq
    # the floor: the model-based value, Σw²/Σw under decay (1 without)
    floor = MIN_DESIGN_EFFECT * (w2 / n if n > 0 else 1.0)
    if not (0 < i < f.size - 1) or n * n <= w2 * (1 + 1e-12):
        return floor
    a = (f[i + 1] - 2 * f[i] + f[i - 1]) / 2  # curvature, grid steps
    b = (f[i + 1] - f[i - 1]) / 2  # slope, grid steps
    if not a > 0:
        return floor
    # Σ w²(s − s̄)² with s̄ = Σ w s / Σ w, in grid steps; × n_eff/(n_eff − 1), n_eff = n²/Σw²
    centred = float(score_sq[i]) * h * h - b * b * w2 / (n * n)
    k = centred * (n * n / (n * n - w2)) / (2 * a)
    return float(max(floor, k)) if math.isfinite(k) else float(floor)  # a plain float for JSON


def parabolas(nll: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(a_i, b_i) of each interior grid point's parabola; NaN on the two edge points."""
    f = np.asarray(nll, dtype=float)
    a = np.full(f.size, np.nan)
    b = np.full(f.size, np.nan)
    a[1:-1] = (f[2:] - 2 * f[1:-1] + f[:-2]) / 2
    b[1:-1] = (f[2:] - f[:-2]) / 2
    return a, b


def _end(f: np.ndarray, a: np.ndarray, b: np.ndarray, level: float, side: int) -> float | None:
    """Offset t (in grid steps, from index 0) of the ``side`` (−1 left, +1 right) crossing of
    ``level``, read from the parabola of the grid point nearest to it; None when no cell has one."""
    c = f - level
    with np.errstate(invalid="ignore", divide="ignore"):
        disc = b * b - 4 * a * c
        root = (-b + side * np.sqrt(disc)) / (2 * a)
    ok = (a > 0) & (disc >= 0) & (np.abs(root) <= ROOT_WINDOW)
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        return None
    pos = idx + root[idx]
    return float(pos.min() if side < 0 else pos.max())


def grid_profile(
    grid: np.ndarray,
    nll: np.ndarray,
    *,
    events: float,
    level: float = 0.95,
    score_sq: np.ndarray | None = None,
    trials: float = 0.0,
    trials_sq: float | None = None,
    design: float | None = None,
) -> Profile:
    """(estimate, lower, upper, design effect) from Σ −ℓ on a grid equally spaced in log T (module
    docstring); `events` is the number of independent divergences behind the curve (trials that
    diverged; 0: nothing diverged). Given ``score_sq`` (Σ_t s_t² per grid point) and ``trials``
    (n, and Σw² for decayed sums) both drops are multiplied by the design effect k; given
    ``design``, by that k; without either k = 1, the model-based interval that treats every
    position as independent.

    The minimum on the smallest grid temperature (or nothing diverged) reads as T̂ = 0 with lower
    bound 0; an end beyond the grid is clipped: lower 0, upper the largest grid temperature. Step by
    step the same as the recording rules (rules_gen.tbg_group)."""
    g = np.asarray(grid, dtype=float)
    f = np.asarray(nll, dtype=float)
    x0, h = math.log(g[0]), math.log(g[1] / g[0])
    two, _ = critical_values(level)
    up = upper_drop(events, level)
    a, b = parabolas(f)
    i = int(np.argmin(f))
    k = 1.0
    if design is not None:  # a design effect read elsewhere (the pooled per-load rules)
        k = design
        two, up = two * k, up * k
    elif score_sq is not None:
        # i = 0 or no divergence: the floor (design_effect returns it for an edge point)
        at = i if events > 0 else 0
        k = design_effect(f, np.asarray(score_sq, dtype=float), at, h, trials, trials_sq)
        two, up = two * k, up * k

    def temp(pos: float) -> float:
        return math.exp(x0 + pos * h)

    if i == 0 or events <= 0:
        right = _end(f, a, b, float(f[0]) + up, +1)
        return Profile(0.0, 0.0, float(g[-1]) if right is None else temp(right), k, level)
    pos, m = float(i), float(f[i])
    if i < f.size - 1 and a[i] > 0:
        pos, m = i - b[i] / (2 * a[i]), float(f[i] - b[i] * b[i] / (4 * a[i]))
    left = _end(f, a, b, m + two, -1)
    right = _end(f, a, b, m + up, +1)
    est = temp(pos)
    lower = 0.0 if left is None else min(temp(left), est)
    upper = float(g[-1]) if right is None else max(temp(right), est)
    return Profile(est, lower, upper, k, level)
