"""What to do with a measurement that did not decide: how many runs would, and which of two
temperatures to believe.

How many runs would decide a level is projected from the data's own likelihood profile: with k
times more of the same data the log-likelihood is k times deeper around the same estimate, so the
upper end of the interval sits where k·(ℓ(T̂) − ℓ(T)) reaches the upper end's drop (with k times the
divergences in its small-count correction). The smallest k that puts the upper end at the ceiling,
gives even odds; times `power_margin` (aiming at 80 %: the estimate of the new data scatters
around the old one by the interval's own width) 74 % to 100 % on simulated stacks, turned into
runs per prompt (each run after a
prompt's first adds one run's worth of comparisons). It is a projection: it assumes the estimate
holds; a level whose estimate is at or above the ceiling cannot be shown to be under it by more
runs. Checked on simulated stacks of known T_bg (tests/measure/test_next_steps.py).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.stats as st

from estimator.profile import critical_values, upper_drop
from measure import analysis
from measure.store import Record

ABOVE = -1  # the estimate itself is at or above the ceiling
MAX_FACTOR = 1e6
POWER = 0.8


def power_margin(level: float, power: float = POWER) -> float:
    """(1 + z_power / z_level)²: how much more data than the even-odds projection gives `power`."""
    z_level = float(st.norm.ppf((1 + level) / 2))
    return (1 + float(st.norm.ppf(power)) / z_level) ** 2


def data_factor(curve: analysis.ProfileCurve, diverged: int, ceiling: float) -> float | None:
    """How many times more of the same data would put the interval's upper end at `ceiling`
    (`diverged`: the divergences the small-count correction counts, diverged trials):
    1 when it is there already, ABOVE when the estimate is not below the ceiling, None when the
    profile does not reach the ceiling (or it would take more than MAX_FACTOR times the data)."""
    if curve.estimate >= ceiling:
        return ABOVE
    if curve.upper <= ceiling:
        return 1.0
    ts = np.asarray(curve.temperatures)
    if not ts[0] <= ceiling <= ts[-1]:
        return None
    depth = -float(np.interp(math.log(ceiling), np.log(ts), np.asarray(curve.drop)))
    if not depth > 0:
        return None

    # The interval's drops are scaled by the design effect (runs of one request are alike); it is
    # a ratio, so k times the same data keeps it.
    design = curve.threshold / -critical_values(curve.level)[0]

    def short(k: float) -> bool:  # k times the data still leaves the upper end above the ceiling
        return k * depth < design * upper_drop(k * diverged, curve.level)

    lo, hi = 1.0, MAX_FACTOR
    if short(hi):
        return None
    for _ in range(60):  # k·depth − drop(k·D) grows with k: bisect on a log scale
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if short(mid) else (lo, mid)
    return hi


def runs_for(factor: float, runs: int, others: int) -> int:
    """Runs per prompt that give `factor` times the comparisons of `runs`, when each prompt's
    trial also holds `others` runs that do not grow (the lowest load's run, for t_vs_lowest)."""
    now = runs + others - 1  # runs after each trial's first
    return max(runs, math.ceil(factor * now - 1e-9) - others + 1)


def level_needs(
    recs: Sequence[Record], base: Sequence[Record], runs: int, ceiling: float, conf: float
) -> int | None:
    """Runs per prompt that would decide one sweep level (both its views: steady, and with the
    lowest load's first run added); ABOVE or None as `data_factor`."""
    views: list[tuple[Sequence[Record], int]] = [(recs, 0)]
    if base:
        prompts = {r.key.prompt for r in recs}
        views.append(([*[b for b in base if b.key.prompt in prompts], *recs], 1))
    needs: list[int] = []
    for records, others in views:
        try:
            result, curve = analysis.likelihood(analysis.trials_from(records), level=conf)
        except ValueError:
            continue
        diverged = result.diagnostics.diverged_trials
        k = data_factor(curve, diverged, ceiling)
        if k is None or k == ABOVE:
            return None if k is None else ABOVE
        needs.append(runs if k == 1.0 else runs_for(k * power_margin(conf), runs, others))
    return max(needs) if needs else None


def sweep_needs(
    records: Sequence[Record], levels: Sequence[int], runs: int, ceiling: float, conf: float
) -> list[tuple[int, int | None]]:
    """(load, runs per prompt that would decide it) for each level measured, as `tbg sweep`
    compares them: the runs of one level with each other, and with the lowest level's first."""
    by_level: dict[int, list[Record]] = defaultdict(list)
    for r in records:
        by_level[r.key.level].append(r)
    low = min(levels)
    base = [r for r in by_level.get(low, []) if r.key.run == 0]
    return [
        (c, level_needs(by_level[c], base if c != low else [], runs, ceiling, conf))
        for c in levels
        if by_level.get(c)
    ]


def runs_to_decide(needs: Sequence[tuple[int, int | None]], ceiling: float, runs: int) -> str:
    """One line for `tbg sweep` when no level was shown to be under the ceiling."""
    parts: list[str] = []
    best: tuple[int, int] | None = None  # (runs, load): the fewest runs, then the highest load
    for load, need in needs:
        if need is None:
            parts.append(f"load {load}: cannot tell")
        elif need == ABOVE:
            parts.append(
                f"load {load}: estimate at or above the ceiling (more runs would likely show it "
                "unsafe)"
            )
        else:
            parts.append(f"load {load}: ~{need}")
            if best is None or need <= best[0]:
                best = (need, load)
    head = (
        f"runs per prompt that would likely (about 3 times in 4) show each level under the "
        f"ceiling {ceiling:g}, if its estimate holds (now {runs}): " + "; ".join(parts)
    )
    if best is None:
        return head + ". No level's estimate is below the ceiling."
    return (
        f"{head}. Next: rerun with --runs {best[0]} (the runs already made are kept) to decide "
        f"load {best[1]}."
    )


def which_to_believe(est: Mapping[str, Any]) -> str | None:
    """For `tbg measure`: the likelihood is T_bg; the jitter is a cross-check. Why they differ."""
    lk, jt = est.get("likelihood"), est.get("jitter")
    if not lk or not jt or jt.get("estimate") is None or lk.get("upper") is None:
        return None
    j, lo, hi = jt["estimate"], lk.get("lower") or 0.0, lk["upper"]
    base = (
        "Which to believe: T_bg is the likelihood figure. It scores the tokens the runs actually "
        "chose where they could differ. The jitter figure converts how much the logprobs moved "
        "between runs, at every position they shared, into a temperature, assuming that noise is "
        "Gaussian and independent per token: many more data points, so a narrower interval, but "
        "an assumption the likelihood does not make."
    )
    if lo <= j <= hi:
        return (
            f"{base} Here the jitter ({j:.3g}) lies inside the likelihood's interval: they agree."
        )
    if j > hi:
        return (
            f"{base} Here the jitter ({j:.3g}) is above the likelihood's upper bound ({hi:.3g}): "
            "the logprobs move more than the token choices show, so the noise is not the "
            "independent Gaussian kind the jitter assumes (it rarely flips a token)."
        )
    return (
        f"{base} Here the jitter ({j:.3g}) is below the likelihood's lower bound ({lo:.3g}): "
        "tokens flip more often than that much logprob noise explains, i.e. in rarer, larger "
        "jumps (such as a kernel that changes with the batch size)."
    )
