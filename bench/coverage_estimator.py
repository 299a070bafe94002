"""Live-interval coverage at the estimator level on the ground-truth generators (bench/truth.py):
data sets of `trials` trials of `runs` runs (primary + replays) through `OnlineEstimator` without
decay; docs/coverage.md quotes the grid of runs over laws x T x runs.

    python -m bench.coverage_estimator LAW T RUNS DATASETS TRIALS [HALF_LIFE_TRIALS]
    for law in lognormal exponential ties flat-tail; do for T in 0.01 0.05 0.2; do
      for r in 2 3 5; do python -m bench.coverage_estimator $law $T $r 100 40; done; done; done
"""

from __future__ import annotations

import sys
import time

import numpy as np

from bench.truth import TruthModel
from estimator.online import OnlineConfig, OnlineEstimator


def main() -> None:
    law, temp = sys.argv[1], float(sys.argv[2])
    runs, sets, trials = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    half_life = float(sys.argv[6]) if len(sys.argv) > 6 else 1e12  # default: no decay
    t0 = time.time()
    cov = low = high = 0
    for s in range(sets):
        model = TruthModel(law=law, seed=s)  # type: ignore[arg-type]
        rng = np.random.default_rng(1000 + s)
        est = OnlineEstimator(OnlineConfig(half_life_trials=half_life))
        for p in range(trials):
            est.update(model.trial(rng, p, runs=runs, length=32, temperature=temp))
        snap = est.snapshot()
        cov += snap.lower <= temp <= snap.upper
        low += snap.lower > temp
        high += snap.upper < temp
    print(
        f"{law} {temp} {runs} coverage {cov}/{sets} (lower>T {low}, upper<T {high}) "
        f"{time.time() - t0:.1f}s"
    )


if __name__ == "__main__":
    main()
