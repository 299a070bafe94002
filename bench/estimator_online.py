"""Online estimator throughput and memory: 128-token pairs with top-5 logprobs.

    python bench/estimator_online.py [--updates N] [--memory-updates M]

Updates per second on one core (trials prebuilt, so only `OnlineEstimator.update` is timed) and
peak traced memory over M updates cycling through the prebuilt trials (flat memory = bounded state).
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from estimator.online import OnlineConfig, OnlineEstimator
from estimator.simulate import simulate_pairs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--updates", type=int, default=2000)
    ap.add_argument("--memory-updates", type=int, default=1_000_000)
    ap.add_argument("--temperature", type=float, default=0.01)
    a = ap.parse_args()
    trials = simulate_pairs(
        np.random.default_rng(0), pairs=500, length=128, temperature=a.temperature
    ).trials()
    est = OnlineEstimator(OnlineConfig())
    t0 = time.process_time()
    for i in range(a.updates):
        est.update(trials[i % len(trials)])
    dt = time.process_time() - t0
    print(
        f"updates/s (CPU time, 1 core): {a.updates / dt:.0f}  ({dt / a.updates * 1e6:.0f} us/update)"
    )
    tracemalloc.start()
    marks = []
    step = max(1, a.memory_updates // 10)
    for i in range(a.memory_updates):
        est.update(trials[i % len(trials)])
        if (i + 1) % step == 0:
            marks.append(tracemalloc.get_traced_memory()[0])
    print("traced memory (bytes) every", step, "updates:", marks)
    print("snapshot:", est.snapshot())


if __name__ == "__main__":
    main()
