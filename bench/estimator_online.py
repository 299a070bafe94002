"""Online estimator throughput and memory: 128-token pairs with top-5 logprobs.

    python bench/estimator_online.py [--updates N] [--memory-updates M] [--rss-updates R]
        [--temperature T | --sigma S]

Updates per second on one core (trials prebuilt, so only `OnlineEstimator.update` is timed),
traced memory over M updates and resident set size (RSS) at start, middle and end of R updates
(no tracing, so it stays fast enough for R = 10^6), cycling through the prebuilt trials (flat
memory = bounded state). Trials come from the ideal simulator at --temperature (runs report
bit-identical logprobs), or with --sigma from greedy decoding with Gaussian logit noise (logprobs
differ at every position, as on a real batched server). The 1-minute load average is printed
alongside (the figures are CPU time of this process, but a loaded machine still slows it).
"""

from __future__ import annotations

import argparse
import os
import time
import tracemalloc

import numpy as np

from estimator.online import OnlineConfig, OnlineEstimator
from estimator.simulate import simulate_pairs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--updates", type=int, default=2000)
    ap.add_argument("--memory-updates", type=int, default=1_000_000)
    ap.add_argument("--rss-updates", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=0.01)
    ap.add_argument("--sigma", type=float, default=0.0)
    a = ap.parse_args()
    temp = 0.0 if a.sigma > 0 else a.temperature
    trials = simulate_pairs(
        np.random.default_rng(0), pairs=500, length=128, temperature=temp, sigma=a.sigma
    ).trials()
    print(f"load average before: {os.getloadavg()}")
    est = OnlineEstimator(OnlineConfig())
    t0 = time.process_time()
    for i in range(a.updates):
        est.update(trials[i % len(trials)])
    dt = time.process_time() - t0
    print(
        f"updates/s (CPU time, 1 core): {a.updates / dt:.0f}  ({dt / a.updates * 1e6:.0f} us/update)"
        f"; load average after: {os.getloadavg()}",
        flush=True,
    )
    tracemalloc.start()
    marks = []
    step = max(1, a.memory_updates // 10)
    for i in range(a.memory_updates):
        est.update(trials[i % len(trials)])
        if (i + 1) % step == 0:
            marks.append(tracemalloc.get_traced_memory()[0])
    print("traced memory (bytes) every", step, "updates:", marks, flush=True)
    tracemalloc.stop()
    if a.rss_updates:
        marks_rss = [(0, _rss())]
        for i in range(a.rss_updates):
            est.update(trials[i % len(trials)])
            if i + 1 in (a.rss_updates // 2, a.rss_updates):
                marks_rss.append((i + 1, _rss()))
        print("RSS (bytes) after updates:", marks_rss, flush=True)
    print("snapshot:", est.snapshot())


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


if __name__ == "__main__":
    main()
