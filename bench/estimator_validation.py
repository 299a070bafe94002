"""Validation figures quoted in docs/estimators.md (same seeds as tests/estimator).

python bench/estimator_validation.py
"""

from __future__ import annotations

import numpy as np

from estimator.likelihood import fit
from estimator.simulate import GapModel, simulate_pairs


def main() -> None:
    for temp in (0.005, 0.02, 0.1):
        rng = np.random.default_rng(int(temp * 1e4))
        est = [
            fit(simulate_pairs(rng, pairs=200, length=128, temperature=temp).ideal_nodes()).estimate
            for _ in range(25)
        ]
        print(f"T={temp}: median T̂/T = {np.median(est) / temp:.3f} over 25 data sets")
    rng = np.random.default_rng(7)
    hits = 0
    for _ in range(400):
        sim = simulate_pairs(rng, pairs=200, length=128, temperature=0.02, gaps=GapModel(vocab=8))
        r = fit(sim.ideal_nodes())
        hits += r.lower <= 0.02 <= r.upper
    print(f"T=0.02: 95 % profile interval covered the truth in {hits}/400 = {hits / 4:.1f} %")


if __name__ == "__main__":
    main()
