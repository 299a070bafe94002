"""Event-loop time per shadow trial: what the Aggregator still does on the loop (fold a finished
comparison into the overall and per-bucket estimators, publish the view) against what moved to a
worker thread (the comparison: trie walk and grid likelihood).

    python -m bench.fold_cost [--trials 500] [--runs 3] [--tokens 32]

Prints medians and p99 in milliseconds per trial.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from bench.truth import TruthModel
from estimator.model import TrialContext
from estimator.online import OnlineConfig, OnlineEstimator
from proxy.shadow.classes import RequestClass
from proxy.shadow.state import ShadowState


def _summary(xs: list[float]) -> str:
    ordered = sorted(xs)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return f"median {statistics.median(xs):.3f} ms, p99 {p99:.3f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trials", type=int, default=500)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument(
        "--no-class",
        action="store_true",
        help="fold without a request class (overall and load only)",
    )
    a = ap.parse_args()
    state = ShadowState(OnlineConfig(), exemplar_limit=50)
    comparer = OnlineEstimator(OnlineConfig())  # the Worker's: only compare(), never updated
    truth = TruthModel(seed=1)
    rng = np.random.default_rng(1)
    # The proxy folds every trial into its request class's estimator too (proxy.shadow.classes).
    request_class = None if a.no_class else RequestClass("chat", "plain", "whole")
    compare, fold, publish = [], [], []
    for p in range(a.trials):
        trial = truth.trial(rng, p, runs=a.runs, length=a.tokens, temperature=0.05,
                            context=TrialContext("up", "m", "4"))  # fmt: skip
        t0 = time.perf_counter()
        comparison = comparer.compare(trial)  # the Worker: a worker thread or process
        t1 = time.perf_counter()
        state.record_comparison(
            trial.context, comparison, request_class
        )  # the Aggregator, on the loop
        t2 = time.perf_counter()
        if p % 10 == 0:  # at most once a second in the proxy; here every 10th trial
            state.publish(p)
            publish.append((time.perf_counter() - t2) * 1e3)
        compare.append((t1 - t0) * 1e3)
        fold.append((t2 - t1) * 1e3)
    print(f"{a.trials} trials of {a.runs} runs x {a.tokens} tokens, 1 model")
    print(f"comparison (worker thread, was on the event loop): {_summary(compare)}")
    print(f"fold into the estimators (event loop): {_summary(fold)}")
    print(f"publish a view after a change (event loop, <= once a second): {_summary(publish)}")


if __name__ == "__main__":
    main()
