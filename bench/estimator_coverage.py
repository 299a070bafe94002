"""Profile-likelihood interval coverage of `likelihood` on simulated ideal systems (one-off runs
quoted in docs/estimators.md).

    python bench/estimator_coverage.py --seed 7 --datasets 400 [--temperature 0.02] [--pairs 200]
        [--bins 5] [--out rows.csv]

Also prints coverage by the number of diverged pairs per data set (quantile bins) and, with
--out, writes one row per data set (diverged, estimate, lower, upper) for further study.
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from estimator.likelihood import Likelihood, fit
from estimator.simulate import GapModel, simulate_pairs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--datasets", type=int, default=400)
    ap.add_argument("--temperature", type=float, default=0.02)
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--bins", type=int, default=5)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    temp = a.temperature
    low = high = 0
    rows: list[tuple[int, float, float, float]] = []
    wilks: list[float] = []  # W = 2[ℓ(T̂) − ℓ(T)] at the true T; χ²₁ (mean 1) under Wilks
    for _ in range(a.datasets):
        sim = simulate_pairs(
            rng, pairs=a.pairs, length=128, temperature=temp, gaps=GapModel(vocab=8)
        )
        nodes = sim.ideal_nodes()
        r = fit(nodes)
        est, lo, hi = r.estimate, r.lower, r.upper
        if not math.isnan(r.diagnostics.loglik_max):
            wilks.append(2 * (r.diagnostics.loglik_max - Likelihood(nodes).loglik(1 / temp)))
        rows.append((int((sim.first < 128).sum()), est, lo, hi))
        low += temp < lo  # interval entirely above the truth
        high += temp > hi  # interval entirely below the truth
    n = a.datasets
    cov = 1 - (low + high) / n
    se = math.sqrt(cov * (1 - cov) / n)
    print(
        f"seed={a.seed} T={temp} datasets={n}: coverage {n - low - high}/{n} = {100 * cov:.1f} % "
        f"(SE {100 * se:.1f} %); misses: truth below interval {low}, above interval {high}"
    )
    w = np.array(wilks)
    if w.size:
        print(
            f"W = 2Δℓ at the true T over {w.size} data sets: mean {w.mean():.3f} "
            f"(χ²₁: 1; SE {w.std() / math.sqrt(w.size):.3f}), P(W > 3.84) = {(w > 3.84).mean():.3f}, "
            f"P(W > 3.84·mean W) = {(w > 3.84 * w.mean()).mean():.3f}"
        )
    _by_diverged(rows, temp, a.bins)
    if a.out:
        with open(a.out, "w") as f:
            f.write("diverged,estimate,lower,upper\n")
            f.writelines(f"{d},{e!r},{lo!r},{hi!r}\n" for d, e, lo, hi in rows)


def _by_diverged(rows: list[tuple[int, float, float, float]], temp: float, bins: int) -> None:
    d = np.array([r[0] for r in rows])
    below = np.array([temp < r[2] for r in rows])
    above = np.array([temp > r[3] for r in rows])
    edges = np.unique(np.quantile(d, np.linspace(0, 1, bins + 1)))
    idx = np.clip(np.searchsorted(edges, d, side="right") - 1, 0, edges.size - 2)
    for b in range(edges.size - 1):
        m = idx == b
        n = int(m.sum())
        if n == 0:
            continue
        miss = int((below | above)[m].sum())
        print(
            f"  diverged in [{edges[b]:.0f}, {edges[b + 1]:.0f}{']' if b == edges.size - 2 else ')'}:"
            f" {n} data sets, coverage {100 * (1 - miss / n):.1f} % "
            f"(truth below {int(below[m].sum())}, above {int(above[m].sum())})"
        )


if __name__ == "__main__":
    main()
