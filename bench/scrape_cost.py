"""Cost of one Prometheus scrape of the shadow collector (and of the /tbg snapshots behind it) with
many configured models and data in every load bucket.

    python -m bench.scrape_cost [--models 40] [--scrapes 50]

Reports the first scrape after new data (every snapshot recomputed) and steady scrapes (snapshots
cached until the next comparison), in milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest

from bench.truth import TruthModel
from estimator.model import TrialContext
from estimator.online import OnlineConfig
from proxy.shadow.config import ShadowConfig
from proxy.shadow.load import LOAD_BUCKETS
from proxy.shadow.metrics import ShadowCollector
from proxy.shadow.state import ShadowState


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", type=int, default=40)
    ap.add_argument("--scrapes", type=int, default=50)
    a = ap.parse_args()
    state = ShadowState(OnlineConfig(), exemplar_limit=16)
    models = tuple(f"m{i}" for i in range(a.models))
    truth = TruthModel(seed=1)
    rng = np.random.default_rng(1)
    for m in models:
        state.prime(("up", m), LOAD_BUCKETS)
        for b in LOAD_BUCKETS:
            trial = truth.trial(rng, hash((m, b)) % 1000, runs=3, length=32, temperature=0.05,
                                context=TrialContext("up", m, b))  # fmt: skip
            state.record(trial)
    registry = CollectorRegistry()
    registry.register(
        ShadowCollector(state, ShadowConfig(enabled=True), models, lambda: 0, lambda: 0)
    )
    t0 = time.perf_counter()
    body = generate_latest(registry)
    first = (time.perf_counter() - t0) * 1e3
    steady = []
    for _ in range(a.scrapes):
        t0 = time.perf_counter()
        generate_latest(registry)
        steady.append((time.perf_counter() - t0) * 1e3)
    collector = ShadowCollector(state, ShadowConfig(enabled=True), models, lambda: 0, lambda: 0)
    collect = []
    for _ in range(a.scrapes):
        t0 = time.perf_counter()
        for _fam in collector.collect():
            pass
        collect.append((time.perf_counter() - t0) * 1e3)
    series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
    print(
        f"{a.models} models x {len(LOAD_BUCKETS)} buckets, {series} series: first scrape after new "
        f"data {first:.1f} ms; steady scrape median {statistics.median(steady):.1f} ms, "
        f"max {max(steady):.1f} ms; of which the collector's own work (collect(), without the "
        f"text exposition) median {statistics.median(collect):.1f} ms"
    )


if __name__ == "__main__":
    main()
