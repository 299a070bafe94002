"""Shadow accounting under overload and shutdown: sampled == replayed + dropped + failed exactly,
with the jobs still queued at stop counted as `shutdown` (not `queue_full`)."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from bench.fake_upstream import make_app as fake_app
from proxy.app import make_app, make_runner
from proxy.config import Overrides, load_config
from proxy.shadow.wiring import SHADOW
from tests.shadow.conftest import worker_env

REQUESTS = 40


async def test_accounting_holds_through_overload_and_shutdown() -> None:
    fake = web.AppRunner(fake_app(8, 0.2), access_log=None)  # each call ≈ 200 ms
    await fake.setup()
    await web.TCPSite(fake, "127.0.0.1", 0).start()
    upstream = f"http://127.0.0.1:{fake.addresses[0][1]}/v1"
    config = load_config(
        Overrides(upstreams=(upstream,), models=("m",), sample_rate=1, replays=2, port=0),
        worker_env(),
    )
    app = make_app(config)
    runner = make_runner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/chat/completions"
        body = {"model": "m", "temperature": 0, "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}  # fmt: skip
        async with aiohttp.ClientSession() as http:

            async def one() -> None:
                async with http.post(url, json=body) as r:
                    assert r.status == 200
                    await r.read()

            await asyncio.gather(*(one() for _ in range(REQUESTS)))
        tap = app[SHADOW]
        queued = tap.queue_depth()
    finally:
        await runner.cleanup()  # stops the tap while replays are queued and in flight
        await fake.cleanup()
    totals = tap.view().totals()
    by_reason: dict[str, int] = {}
    for (_, _, reason), n in tap.view().dropped.items():
        by_reason[reason] = by_reason.get(reason, 0) + n
    assert totals["sampled"] == REQUESTS
    assert totals["sampled"] == totals["replayed"] + totals["dropped"] + totals["failed"], totals
    assert by_reason.get("shutdown", 0) >= queued > 0, (by_reason, queued)
