"""Coverage of the decision flip-rate interval (estimator.decision_rates) on heterogeneous worlds.

For each world × trials per data set: `sets` seeded data sets (estimator.decision_sim.FlipWorld:
per-prompt flip propensities, a share of prompts that never flip, 1..max_replays replays per trial,
replays compared with a shared primary). Per data set, the 95 % interval of the per-replay flip
rate from

* clustered: the product's interval (trial as unit; Korn–Graubard Clopper–Pearson at the
  effective sample size from the cluster-robust ratio variance);
* binomial: a Wilson interval over replays, as if every replay were independent.

Reported: coverage of the population truth, mean width, and the compounded 100-step chance's
coverage (the same interval through 1 − (1 − p)^100).

    nice python -m bench.decision_coverage --sets 2000 --out bench/results/decision_coverage.json \\
        --figure docs/decisions_coverage.png
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

import numpy as np

from estimator.decision_rates import RatioSums, compound, rate
from estimator.decision_sim import FlipWorld

WORLDS: dict[str, FlipWorld] = {
    "sparse": FlipWorld(a=0.4, b=6.0, never_share=0.3, max_replays=3),
    "rare": FlipWorld(a=0.2, b=20.0, never_share=0.5, max_replays=3),
    "dense": FlipWorld(a=2.0, b=8.0, never_share=0.0, max_replays=3),
    "many_replays": FlipWorld(a=0.4, b=6.0, never_share=0.3, max_replays=8),
}
TRIALS = (10, 30, 100, 300)
Z = 1.959963984540054


def wilson(y: int, n: int) -> tuple[float, float]:
    p = y / n
    d = 1 + Z * Z / n
    c = (p + Z * Z / (2 * n)) / d
    h = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def cell(world: FlipWorld, trials: int, sets: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    truth = world.truth()
    truth100 = compound(truth, 100)
    cov = cov_bin = cov100 = 0
    width = width_bin = 0.0
    for _ in range(sets):
        y, m = world.flips(rng, trials)
        sums = RatioSums()
        for yi, mi in zip(y.tolist(), m.tolist(), strict=True):
            sums = sums.add(yi, mi)
        r = rate(sums)
        cov += r.lower <= truth <= r.upper
        cov100 += compound(r.lower, 100) <= truth100 <= compound(r.upper, 100)
        width += r.upper - r.lower
        lo, hi = wilson(int(y.sum()), int(m.sum()))
        cov_bin += lo <= truth <= hi
        width_bin += hi - lo
    return {
        "trials": trials,
        "truth": truth,
        "coverage": cov / sets,
        "coverage_binomial": cov_bin / sets,
        "coverage_compounded_100": cov100 / sets,
        "width": width / sets,
        "width_binomial": width_bin / sets,
        "se": math.sqrt(0.95 * 0.05 / sets),
    }


def figure(results: dict[str, list[dict[str, Any]]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3.2), sharey=True)
    for ax, (name, rows) in zip(axes, results.items(), strict=True):
        xs = [r["trials"] for r in rows]
        ax.plot(xs, [r["coverage"] for r in rows], "o-", label="clustered (trial unit)")
        ax.plot(xs, [r["coverage_binomial"] for r in rows], "s--", label="binomial (replay unit)")
        ax.axhline(0.95, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_ylim(0.6, 1.0)
        ax.set_title(f"{name} (p = {rows[0]['truth']:.3f})", fontsize=9)
        ax.set_xlabel("trials per data set")
    axes[0].set_ylabel("coverage of the 95 % interval")
    axes[0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", type=int, default=2000, help="data sets per cell")
    ap.add_argument("--trials", type=int, nargs="*", default=list(TRIALS))
    ap.add_argument("--worlds", nargs="*", default=list(WORLDS), choices=list(WORLDS))
    ap.add_argument("--out", help="JSON results file")
    ap.add_argument("--figure", help="PNG figure (needs matplotlib)")
    args = ap.parse_args()
    results: dict[str, list[dict[str, Any]]] = {}
    for w, name in enumerate(args.worlds):
        results[name] = []
        for t, trials in enumerate(args.trials):
            row = cell(WORLDS[name], trials, args.sets, seed=1000 * w + t)
            results[name].append(row)
            print(f"{name:<13} trials {trials:>4}  p {row['truth']:.4f}  clustered "
                  f"{row['coverage']:.3f} (width {row['width']:.4f})  binomial "
                  f"{row['coverage_binomial']:.3f} (width {row['width_binomial']:.4f})  "
                  f"100-step {row['coverage_compounded_100']:.3f}")  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"sets": args.sets, "results": results}, f, indent=1)
    if args.figure:
        figure(results, args.figure)


if __name__ == "__main__":
    main()
