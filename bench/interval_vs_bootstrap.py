"""The likelihood interval's implied spread against a bootstrap over prompts, on a `tbg measure`
output folder (real runs of a real stack): before (every position independent, small-count
correction on pairs) and after (the trial as the unit: design effect, diverged trials).

    python -m bench.interval_vs_bootstrap OUT_DIR [--resamples 400]

Prints, for all prompts and with each prompt left out in turn (the prompt whose removal moves T̂
most is named), T̂ with both intervals, the bootstrap SD of log T̂ and the ratio of that SD to each
interval's implied SD ((log upper − log lower)/(2·1.96)); a ratio near 1 is the goal.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from estimator.compare import Nodes
from estimator.likelihood import bootstrap_prompts, estimate_likelihood, fit, trial_nodes
from estimator.model import Trial
from measure.analysis import trials_from
from measure.store import RUNS, Record

Z = 1.959963984540054


def _sd(lo: float, hi: float) -> float:
    return (math.log(hi) - math.log(lo)) / (2 * Z) if lo > 0 and hi > lo else math.nan


def compare(trials: list[Trial], resamples: int) -> dict[str, Any]:
    tn = trial_nodes(trials)
    parts = list(tn.parts)
    nodes = Nodes.concat(parts)
    before = fit(nodes, events=float(tn.counts.diverged))  # before: pairs, k = 1
    est, lo, hi = before.estimate, before.lower, before.upper
    after = estimate_likelihood(trials)
    boot = bootstrap_prompts(parts, resamples=resamples, seed=0)
    sd_b, sd_after = _sd(lo, hi), _sd(after.lower, after.upper)
    return {
        "prompts": len(trials),
        "estimate": est,
        "before": [lo, hi],
        "after": [after.lower, after.upper],
        "design_effect": after.diagnostics.design_effect,
        "bootstrap": [boot.lower, boot.upper],
        "bootstrap_sd_log": boot.sd_log,
        "ratio_before": boot.sd_log / sd_b if sd_b > 0 else math.nan,
        "ratio_after": boot.sd_log / sd_after if sd_after > 0 else math.nan,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--resamples", type=int, default=400)
    a = ap.parse_args()
    lines = Path(a.out, RUNS).read_text("utf-8").splitlines()
    records = [Record.from_json(json.loads(x)) for x in lines if x.strip()]
    trials = [t for t in trials_from(r for r in records if r.key.role == "sut") if len(t.runs) > 1]
    whole = compare(trials, a.resamples)
    print(json.dumps({"all": whole}, indent=1))
    moved = []
    for i, t in enumerate(trials):
        rest = trials[:i] + trials[i + 1 :]
        moved.append(
            (
                abs(
                    math.log(max(estimate_likelihood(rest).estimate, 1e-9))
                    - math.log(max(whole["estimate"], 1e-9))
                ),
                t.fingerprint,
                i,
            )
        )
    _, pid, i = max(moved)
    out = compare(trials[:i] + trials[i + 1 :], a.resamples)
    out["left_out"] = pid
    print(json.dumps({"without_most_influential": out}, indent=1))


if __name__ == "__main__":
    main()
