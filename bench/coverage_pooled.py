"""Coverage of the pooled (fleet) interval and the ceiling alert's error rates.

Three replicas each fold their own ground-truth trials (bench/truth.py) into an online estimator; their
undecayed counters are summed as Prometheus sums them, and read with estimator.profile.grid_profile —
the arithmetic the recording rules reproduce to 1e-6 (tests/monitoring/pooled_cases.py, promtool).
Compared with the exact profile-likelihood interval of all the pooled nodes (estimator.likelihood.fit).

    python -m bench.coverage_pooled --temperature 0.05 --reps 100 [--trials 400] [--scale 1]
        [--halfway] [--ceiling-ratio 1.0526]

--halfway puts the truth halfway (in log T) between two grid points; --scale multiplies the data
(20: twenty times the trials); --ceiling-ratio c reports how often the alert condition
`lower > T_true · c` holds (c = 1/0.95: truth 5 % below the ceiling; c = 1/1.2: truth 20 % above).
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from bench.truth import TruthModel
from estimator.compare import Nodes, compare_trial
from estimator.likelihood import fit
from estimator.online import OnlineConfig, OnlineEstimator, SufficientStats
from estimator.profile import grid_profile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--temperature", type=float, default=0.05)
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--trials", type=int, default=400, help="per data set, over 3 replicas")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scale", type=int, default=1)
    ap.add_argument("--halfway", action="store_true")
    ap.add_argument("--ceiling-ratio", type=float, action="append", default=[])
    ap.add_argument("--law", default="lognormal")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    grid = OnlineConfig().grid
    t = a.temperature
    if a.halfway:
        i = int(np.searchsorted(grid, t))
        t = float(np.sqrt(grid[i - 1] * grid[i]))
    covered = exact_covered = 0
    ratios: list[float] = []
    fires = {c: 0 for c in a.ceiling_ratio}
    for rep in range(a.seed, a.seed + a.reps):
        model = TruthModel(law=a.law, seed=rep)  # type: ignore[arg-type]
        rng = np.random.default_rng(50_000 + rep)
        replicas = [OnlineEstimator() for _ in range(3)]
        parts: list[Nodes] = []
        for p in range(a.trials * a.scale):
            trial = model.trial(rng, p, runs=a.runs, length=32, temperature=t)
            replicas[p % 3].update(trial)
            nodes = compare_trial(trial).nodes
            if nodes is not None:
                parts.append(nodes)
        pooled: SufficientStats = replicas[0].stats() + replicas[1].stats() + replicas[2].stats()
        prof = grid_profile(grid, np.asarray(pooled.nll), events=pooled.scored_diverged)
        exact = fit(Nodes.concat(parts))
        lo, hi = exact.lower, exact.upper
        covered += prof.lower <= t <= prof.upper
        exact_covered += lo <= t <= hi
        if hi > lo:
            ratios.append((prof.upper - prof.lower) / (hi - lo))
        for c in fires:
            fires[c] += prof.lower > t * c
    n = a.reps
    p = covered / n
    print(
        f"T={t:.5g}{' (halfway)' if a.halfway else ''} trials={a.trials}x{a.scale} runs={a.runs} "
        f"law={a.law}: pooled coverage {covered}/{n} = {100 * p:.1f} % "
        f"(SE {100 * math.sqrt(p * (1 - p) / n):.1f}); exact {exact_covered}/{n}; width / exact "
        f"median {np.median(ratios):.4f} max {np.max(ratios):.4f}"
        + "".join(f"; lower > {c:.4g}·T in {k}/{n}" for c, k in fires.items())
    )


if __name__ == "__main__":
    main()
