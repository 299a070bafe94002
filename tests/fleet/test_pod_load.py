"""Per-pod load through the real proxy and shadow path: trials are bucketed by the load of the pod
that served their primary, replays go to that pod, and `load_source: vllm_metrics` polls each
pod's own /metrics. Two fake vLLM pods on distinct 127.0.0.1 ports behind one name; the real
openai SDK as client; the Worker inline and in the shadow worker process."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from openai import AsyncOpenAI

from proxy.shadow.wiring import SHADOW
from tests.fleet.harness import FakeResolver, metric_lines, proxy_for, serve
from tests.shadow.conftest import FakeLLM

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}


class Pod:
    """A fake vLLM pod that counts what it was asked, by path."""

    def __init__(self, running: int | None) -> None:
        self.fake = FakeLLM(running=running)
        self.paths: Counter[str] = Counter()
        self.port = 0

    def app(self) -> web.Application:
        app = self.fake.app()

        async def seen(request: web.Request, _response: web.StreamResponse) -> None:
            self.paths[request.path] += 1

        app.on_response_prepare.append(seen)
        return app

    def primaries(self) -> int:
        return sum(1 for c in self.fake.calls if "max_tokens" not in c)


@pytest.fixture
def runners() -> dict[int, web.AppRunner]:
    return {}


@pytest.fixture
async def busy_and_idle(runners: dict[int, web.AppRunner]) -> AsyncIterator[tuple[Pod, Pod]]:
    busy, idle = Pod(running=37), Pod(running=None)  # idle: its /metrics says nothing
    for pod in (busy, idle):
        runner, pod.port = await serve(pod.app())
        runners[pod.port] = runner
    yield busy, idle
    for runner in runners.values():
        await runner.cleanup()


def shadow(worker: str, **extra: Any) -> dict[str, Any]:
    return {"enabled": True, "sample_rate": 1.0, "replays": 1, "replays_per_minute": 1e6,
            "tokens_per_minute": 1e9, "worker": worker, **extra}  # fmt: skip


@pytest.mark.parametrize("worker", ["inline", "process"])
async def test_trials_are_bucketed_by_their_pods_load(
    busy_and_idle: tuple[Pod, Pod], worker: str
) -> None:
    busy, idle = busy_and_idle
    resolver = FakeResolver([("127.0.0.1", busy.port), ("127.0.0.1", idle.port)])
    config = shadow(worker, load_source="vllm_metrics", load_poll_seconds=0.05)
    async with proxy_for(resolver, busy.port, {"models": ["m"]}, shadow=config) as proxy:
        tap = proxy.app[SHADOW]
        await asyncio.sleep(0.3)  # a few polls of each pod
        async with AsyncOpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0) as oai:
            for _ in range(4):
                out = await oai.chat.completions.create(**CHAT)
                assert out.choices[0].message.content == "Hello, world A!"
                assert await tap.idle(20.0)
        report = await proxy.tbg()
        metrics = await proxy.metrics()
    # Round-robin: two primaries per pod, and each replay went to its primary's pod.
    assert busy.primaries() == idle.primaries() == 2
    assert busy.fake.replays == idle.fake.replays == 2
    # Each pod's own /metrics was polled (through the name, one of them would answer for both).
    assert busy.paths["/metrics"] >= 3 and idle.paths["/metrics"] >= 3
    (estimate,) = report["estimates"]
    assert (estimate["upstream"], estimate["model_name"]) == ("fleet", "m")  # one estimate
    assert estimate["trials"] == 4
    by_load = {bucket: e["trials"] for bucket, e in estimate["by_load"].items()}
    # The busy pod runs 37 by its own count: 64+; the idle one met only this proxy's 1.
    assert by_load == {"64+": 2, "1": 2}
    running = metric_lines(metrics, "tbg_pod_running_requests")
    assert running == {
        f'tbg_pod_running_requests{{pod="127.0.0.1:{busy.port}",upstream="fleet"}}': 37.0
    }


async def test_a_replay_whose_pod_went_away_goes_to_another(
    busy_and_idle: tuple[Pod, Pod], runners: dict[int, web.AppRunner]
) -> None:
    busy, idle = busy_and_idle
    resolver = FakeResolver([("127.0.0.1", busy.port), ("127.0.0.1", idle.port)])
    config = shadow("inline", delay_seconds=0.5)  # the replay waits: time to stop its pod
    async with proxy_for(resolver, busy.port, {"models": ["m"]}, shadow=config) as proxy:
        tap = proxy.app[SHADOW]
        async with AsyncOpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0) as oai:
            await oai.chat.completions.create(**CHAT)
        (served,) = [pod for pod in (busy, idle) if pod.primaries() == 1]
        (other,) = [pod for pod in (busy, idle) if pod is not served]
        await runners[served.port].cleanup()  # the primary's pod is gone before its replay
        assert await tap.idle(20.0)
        report = await proxy.tbg()
    assert report["accounting"] == {"sampled": 1, "replayed": 1, "failed": 0, "dropped": 0}
    assert served.fake.replays == 0 and other.fake.replays == 1


class Gate:
    """Holds requests sent with `x-hold` until opened; `all_in` is set once `count` are held."""

    def __init__(self, count: int) -> None:
        self.count, self.held = count, 0
        self.open, self.all_in = asyncio.Event(), asyncio.Event()


def holding(fake: FakeLLM, gate: Gate) -> web.Application:
    """`fake`'s routes behind a middleware that holds requests sent with `x-hold` at `gate`."""

    @web.middleware
    async def hold(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.headers.get("x-hold"):
            gate.held += 1
            if gate.held >= gate.count:
                gate.all_in.set()
            await gate.open.wait()
        return await handler(request)

    inner = fake.app()
    app = web.Application(middlewares=[hold])
    for route in inner.router.routes():
        app.router.add_route(route.method, route.resource.canonical, route.handler)  # type: ignore[union-attr]
    return app


async def test_in_flight_load_is_the_pods_not_the_upstreams() -> None:
    gate = Gate(3)
    a, b = FakeLLM(), FakeLLM()
    (ra, pa), (rb, pb) = [await serve(holding(f, gate)) for f in (a, b)]
    resolver = FakeResolver([("127.0.0.1", pa)])
    try:
        async with proxy_for(resolver, pa, {"models": ["m"]}, shadow=shadow("inline")) as proxy:
            tap = proxy.app[SHADOW]
            async with AsyncOpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0) as oai:
                # Three requests held on pod a (temperature 1: not measured, only load).
                held = [asyncio.create_task(oai.chat.completions.create(
                    **{**CHAT, "temperature": 1.0}, extra_headers={"x-hold": "1"}))
                    for _ in range(3)]  # fmt: skip
                await asyncio.wait_for(gate.all_in.wait(), 10)
                resolver.answer.append(("127.0.0.1", pb))  # pod b appears
                await asyncio.sleep(0.2)
                for _ in range(2):  # least in flight: pod b, where it is alone
                    await oai.chat.completions.create(**CHAT)
                    assert await tap.idle(20.0)
                resolver.answer = [("127.0.0.1", pa)]  # pod b leaves: the next one meets a's 3
                await asyncio.sleep(0.2)
                await oai.chat.completions.create(**CHAT)
                assert await tap.idle(20.0)
                gate.open.set()
                await asyncio.gather(*held)
            report = await proxy.tbg()
    finally:
        await ra.cleanup()
        await rb.cleanup()
    assert len(b.calls) == 4  # two primaries and their replays
    (estimate,) = report["estimates"]
    by_load = {bucket: e["trials"] for bucket, e in estimate["by_load"].items()}
    # Counted over the upstream, the first two would have met 3 + 1 = 4 in flight.
    assert by_load == {"1": 2, "4": 1}
