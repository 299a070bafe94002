"""Does `paper` land exactly on the true grid point for an ideal system? (docs/estimators.md)

    python bench/estimator_paper.py --true-t 0.05 0.2 --prompts 30 100 200 300 --seeds 11 12

The paper's procedure on a simulated ideal system: N = 100 SUT runs per prompt at the true T,
N = 32 reference draws per prompt at each grid temperature (same logits), 32 tokens, MEMF / AvgLev /
AvgLCS, KS argmin with ties averaged, mean over statistics. The reference grid is `PAPER_GRID`
restricted to T <= 2·T_true + 0.1 (the far grid points are never the argmin and cost the most).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from estimator.paper import PAPER_GRID, estimate_paper
from estimator.simulate import prompt_trials, simulate_prompts


def run_paper(seed: int, prompts: int, true_t: float, length: int = 32) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    z, sut = simulate_prompts(rng, prompts=prompts, runs=100, length=length, temperature=true_t)
    grid = [t for t in PAPER_GRID if t <= 2 * true_t + 0.1]
    refs = {
        t: prompt_trials(
            simulate_prompts(rng, prompts=prompts, runs=32, length=length, temperature=t, logits=z)[
                1
            ]
        )
        for t in grid
    }
    r = estimate_paper(prompt_trials(sut), refs, max_tokens=length)
    out = {k[len("reference:") :]: v for k, v in r.diagnostics.t_n}
    out["estimate"] = r.estimate
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--true-t", type=float, nargs="+", default=[0.05, 0.2])
    ap.add_argument("--prompts", type=int, nargs="+", default=[30, 100, 200, 300])
    ap.add_argument("--seeds", type=int, nargs="+", default=[11])
    a = ap.parse_args()
    for t in a.true_t:
        for n in a.prompts:
            for s in a.seeds:
                t0 = time.process_time()
                res = run_paper(s, n, t)
                exact = all(abs(v - t) < 1e-12 for v in res.values())
                print(
                    f"T={t} prompts={n} seed={s}: "
                    + " ".join(f"{k}={v:.4g}" for k, v in res.items())
                    + f"  exact={exact}  ({time.process_time() - t0:.1f} s CPU)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
