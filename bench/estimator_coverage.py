"""Profile-likelihood interval coverage of `likelihood` on simulated ideal systems (one-off runs
quoted in docs/estimators.md).

    python bench/estimator_coverage.py --seed 7 --datasets 400 [--temperature 0.02]
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from estimator.likelihood import fit
from estimator.simulate import GapModel, simulate_pairs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--datasets", type=int, default=400)
    ap.add_argument("--temperature", type=float, default=0.02)
    ap.add_argument("--pairs", type=int, default=200)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    temp = a.temperature
    low = high = 0
    for _ in range(a.datasets):
        sim = simulate_pairs(
            rng, pairs=a.pairs, length=128, temperature=temp, gaps=GapModel(vocab=8)
        )
        _, lo, hi, _ = fit(sim.ideal_nodes())
        low += temp < lo  # interval entirely above the truth
        high += temp > hi  # interval entirely below the truth
    n = a.datasets
    cov = 1 - (low + high) / n
    se = math.sqrt(cov * (1 - cov) / n)
    print(
        f"seed={a.seed} T={temp} datasets={n}: coverage {n - low - high}/{n} = {100 * cov:.1f} % "
        f"(SE {100 * se:.1f} %); misses: truth below interval {low}, above interval {high}"
    )


if __name__ == "__main__":
    main()
