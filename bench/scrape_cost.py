"""Cost of a Prometheus scrape of a real proxy (make_app, shadow on) with many configured models and
data in every load bucket, and of the publication behind it.

    python -m bench.scrape_cost [--models 40] [--scrapes 50]

Reports, in milliseconds:
- scrape: GET /metrics over loopback (client round trip included), and the handler's own work;
- publish: building the immutable view on the event loop after new data (snapshots recomputed);
- render: turning a view into exposition text (done in a worker thread, at most once per second).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import aiohttp
import numpy as np
from aiohttp import web
from prometheus_client import generate_latest

from bench.truth import TruthModel
from estimator.model import TrialContext
from estimator.online import OnlineConfig, OnlineEstimator
from proxy.app import make_app, make_runner
from proxy.config import build_config
from proxy.keys import EXPOSITION, REGISTRY
from proxy.shadow.load import LOAD_BUCKETS
from proxy.shadow.wiring import SHADOW


def _ms(samples: list[float]) -> str:
    return f"median {statistics.median(samples):.2f} ms, max {max(samples):.2f} ms"


async def run(models: int, scrapes: int) -> None:
    names = [f"m{i}" for i in range(models)]
    config = build_config(
        {
            "upstreams": [{"name": "up", "base_url": "http://127.0.0.1:9/v1", "models": names}],
            "shadow": {"enabled": True, "sample_rate": 0.1},
        },
        {},
    )
    app = make_app(config)
    runner = make_runner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/metrics"
    tap = app[SHADOW]
    agg = tap.aggregator
    truth = TruthModel(seed=1)
    comparer = OnlineEstimator(OnlineConfig())  # the Worker's comparer
    rng = np.random.default_rng(1)
    # Data in every (model, bucket): recorded straight into the Aggregator's state (bench only),
    # as the Aggregator folds a Compared outcome, without running 280 trials through an upstream.
    for m in names:
        for b in LOAD_BUCKETS:
            trial = truth.trial(rng, hash((m, b)) % 1000, runs=3, length=32, temperature=0.05,
                                context=TrialContext("up", m, b))  # fmt: skip
            agg._state.record_comparison(trial.context, comparer.compare(trial))
    t0 = time.perf_counter()
    view = agg.publish()
    publish_first = (time.perf_counter() - t0) * 1e3
    publish = []
    for _ in range(scrapes):
        t0 = time.perf_counter()
        agg.publish()
        publish.append((time.perf_counter() - t0) * 1e3)
    render = []
    for _ in range(max(3, scrapes // 10)):
        t0 = time.perf_counter()
        body = tap.aggregator._render(view) if tap.aggregator._render else b""
        render.append((time.perf_counter() - t0) * 1e3)
    await agg.flush()
    handler = []
    for _ in range(scrapes):
        t0 = time.perf_counter()
        generate_latest(app[REGISTRY]) + b"".join(p() for p in app[EXPOSITION].parts)
        handler.append((time.perf_counter() - t0) * 1e3)
    http = []
    async with aiohttp.ClientSession() as session:
        for _ in range(scrapes):
            t0 = time.perf_counter()
            async with session.get(url) as r:
                text = await r.text()
            http.append((time.perf_counter() - t0) * 1e3)
    series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    shadow_series = sum(1 for line in body.decode().splitlines() if line and line[0] != "#")
    await runner.cleanup()
    print(f"{models} models x {len(LOAD_BUCKETS)} buckets, data in every bucket; /metrics holds "
          f"{series} series ({shadow_series} from the shadow view)")  # fmt: skip
    print(f"scrape over HTTP: {_ms(http)}; handler alone: {_ms(handler)}")
    print(f"publish (event loop): first after new data {publish_first:.2f} ms, then {_ms(publish)}")
    print(f"render of one view (worker thread, <= once per second): {_ms(render)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", type=int, default=40)
    ap.add_argument("--scrapes", type=int, default=50)
    a = ap.parse_args()
    asyncio.run(run(a.models, a.scrapes))


if __name__ == "__main__":
    main()
