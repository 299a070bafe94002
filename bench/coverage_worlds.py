"""Interval coverage on worlds the estimator was not written against (bench/worlds.py).

For each world × runs per trial × data size: `sets` seeded data sets of `trials` trials; every trial
goes through the real comparison and `OnlineEstimator` (estimator/online.py). Per data set:

* live: the product's default online state (half-life 200 trials), its snapshot interval;
* pooled: the undecayed additive statistics split over three replicas and summed, read with
  estimator.profile.grid_profile (what the recording rules compute in PromQL, checked against it
  by promtool in deploy/prometheus/tests/tbg-pooled.test.yml), with the trial-level design effect;
* naive: the same pooled curve read as before, every position independent (k = 1, events = pairs);
* bootstrap: percentile interval of T̂ over 200 resamples of the data set's trials.

Target: the true T in `boltzmann`; otherwise the pseudo-true T* of each data set, the estimate on the
pooled statistics of all *other* data sets of the same cell (leave-one-out, (sets − 1)× the data).
Also: the oracle spread (2·1.96·SD of log T̂ across data sets) against the mean pooled width in
log T, and the ceiling alert (TbgAboveCeiling: the lower bound of the full window and of its last
sixth both above the ceiling) with the truth 5 % below the ceiling and 20 % above it.

    nice python -m bench.coverage_worlds --scale 1 --sets 100 --out bench/results/coverage_worlds_1x.json
    nice python -m bench.coverage_worlds --scale 20 --sets 25 --out bench/results/coverage_worlds_20x.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.worlds import WORLDS
from estimator.online import OnlineConfig, OnlineEstimator
from estimator.profile import grid_profile

GRID = OnlineConfig().grid
BOOT = 200


@dataclass(frozen=True)
class Cell:
    world: str
    runs: int
    trials: int
    sets: int
    seed: int


def _sums(rows: dict[str, np.ndarray], sel: slice | np.ndarray) -> dict[str, Any]:
    return {k: v[sel].sum(0) for k, v in rows.items()}


def _pooled(s: dict[str, Any], adjusted: bool = True) -> tuple[float, float, float, float]:
    if s["scored"] == 0:
        return math.nan, math.nan, math.nan, math.nan
    if adjusted:
        p = grid_profile(
            GRID,
            s["nll"],
            events=float(s["div_trials"]),
            score_sq=s["sq"],
            trials=float(s["scored"]),
        )
    else:
        p = grid_profile(GRID, s["nll"], events=float(s["div_pairs"]))
    return p.estimate, p.lower, p.upper, p.design_effect


def one_set(cell: Cell, i: int) -> dict[str, Any]:
    world = WORLDS[cell.world]
    rng = np.random.default_rng(
        [cell.seed, list(WORLDS).index(cell.world), cell.runs, cell.trials, i]
    )
    live = OnlineEstimator()
    flat = OnlineEstimator(OnlineConfig(half_life_trials=1e15))
    rows: dict[str, list[Any]] = {k: [] for k in ("nll", "sq", "scored", "div_trials", "div_pairs")}
    for p in range(cell.trials):
        trial = world.trial(rng, p, runs=cell.runs, length=32)
        tc = live.update(trial)
        flat.add(tc)
        rows["nll"].append(tc.nll)
        rows["sq"].append(tc.score_sq)
        rows["scored"].append(1.0 if tc.scored else 0.0)
        rows["div_trials"].append(1.0 if tc.scored and tc.diverged else 0.0)
        rows["div_pairs"].append(float(tc.diverged) if tc.scored else 0.0)
    arr = {k: np.asarray(v) for k, v in rows.items()}
    snap = live.snapshot()
    whole = _sums(arr, slice(None))
    short = _sums(arr, slice(cell.trials - cell.trials // 6, None))
    boot = []
    for _ in range(BOOT):
        idx = rng.integers(0, cell.trials, cell.trials)
        boot.append(_pooled(_sums(arr, idx))[0])
    b = np.asarray(boot, dtype=float)
    b = b[np.isfinite(b)]
    return {
        "nll": whole["nll"].tolist(),
        "live": [snap.estimate, snap.lower, snap.upper, snap.design_effect],
        "pooled": list(_pooled(whole)),
        "naive": list(_pooled(whole, adjusted=False)),
        "short": list(_pooled(short)),
        "boot": [float(np.quantile(b, 0.025)), float(np.quantile(b, 0.975))] if b.size else [0, 0],
    }


def _cover(lo: float, hi: float, t: float) -> bool:
    return bool(lo <= t <= hi)


def summarise(cell: Cell, sets: list[dict[str, Any]]) -> dict[str, Any]:
    nll = np.asarray([s["nll"] for s in sets])
    total = nll.sum(0)
    truth = WORLDS[cell.world].temperature
    targets = []
    for i in range(len(sets)):
        rest = total - nll[i]
        t_star = grid_profile(GRID, rest, events=1e9).estimate
        targets.append(truth if truth > 0 else t_star)
    out: dict[str, Any] = {
        "world": cell.world,
        "runs": cell.runs,
        "trials": cell.trials,
        "sets": len(sets),
        "target": "T" if truth > 0 else "T* (leave-one-out)",
        "target_median": float(np.median(targets)),
    }
    for key in ("live", "pooled", "naive", "boot"):
        j = 0 if key == "boot" else 1
        lo = [s[key][j] for s in sets]
        hi = [s[key][j + 1] for s in sets]
        cov = [_cover(a, b, t) for a, b, t in zip(lo, hi, targets, strict=True)]
        out[f"{key}_coverage"] = float(np.mean(cov))
        out[f"{key}_low"] = float(np.mean([a > t for a, t in zip(lo, targets, strict=True)]))
    est = np.asarray([s["pooled"][0] for s in sets])
    ok = est > 0
    logs = np.log(est[ok])
    oracle = 2 * 1.96 * float(np.std(logs, ddof=1)) if ok.sum() > 2 else math.nan
    p_lo = np.asarray([s["pooled"][1] for s in sets])[ok]
    p_hi = np.asarray([s["pooled"][2] for s in sets])[ok]
    width = float(np.mean(np.log(p_hi) - np.log(np.maximum(p_lo, 1e-12))))
    out["pooled_width_over_oracle"] = width / oracle if oracle > 0 else math.nan
    out["design_effect_median"] = float(np.median([s["pooled"][3] for s in sets]))
    # TbgAboveCeiling: lower bounds of the whole window and of its last sixth above the ceiling
    for name, factor in (("alert_truth_5pct_below", 0.95), ("alert_truth_20pct_above", 1.2)):
        fired = [
            s["pooled"][1] > t / factor and s["short"][1] > t / factor
            for s, t in zip(sets, targets, strict=True)
        ]
        out[name] = float(np.mean(fired))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worlds", nargs="*", default=list(WORLDS))
    ap.add_argument("--runs", nargs="*", type=int, default=[2, 3, 5])
    ap.add_argument("--base-trials", type=int, default=60)
    ap.add_argument("--scale", type=int, default=1)
    ap.add_argument("--sets", type=int, default=100)
    ap.add_argument("--seed", type=int, default=20)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    results = []
    with ProcessPoolExecutor(a.jobs) as pool:
        for world in a.worlds:
            for runs in a.runs:
                cell = Cell(world, runs, a.base_trials * a.scale, a.sets, a.seed)
                t0 = time.time()
                sets = list(pool.map(one_set, [cell] * a.sets, range(a.sets)))
                r = summarise(cell, sets)
                r["seconds"] = round(time.time() - t0, 1)
                results.append(r)
                print(json.dumps(r), flush=True)
                if a.out:
                    with open(a.out, "w", encoding="utf-8") as fh:
                        json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
