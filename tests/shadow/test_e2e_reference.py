"""End to end: the real proxy with shadow replay in front of the real reference LLM (SmolLM2 on
CPU), driven by the real openai SDK under bounded load. Ground truth comes from the upstream's mode:
`serial` is deterministic (T_bg = 0), `thermostat` is an ideal sampler at a known T, `batched`
has real bf16 batch-composition effects."""

from __future__ import annotations

import asyncio
import functools
import operator
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web
from openai import AsyncOpenAI

from estimator.online import estimate_from_stats
from proxy.app import make_app, make_runner
from proxy.config import build_config
from proxy.shadow.tap import ShadowTap
from proxy.shadow.wiring import SHADOW
from reference.launch import ReferenceProcess

pytestmark = [pytest.mark.reference, pytest.mark.slow]

PROMPTS = [
    "Write a short poem about the sea.",
    "Explain what a hash table is.",
    "List three uses of copper.",
    "Why is the sky blue?",
    "Describe a sunrise.",
    "Give me a recipe idea with rice.",
    "Tell me a fun fact about octopuses.",
    "How does a bicycle stay upright?",
]
THERMOSTAT_T = 0.3
# One torch thread: the test process (proxy, estimator, clients) needs the other core; two torch
# threads on a busy 2-core machine oversubscribe it and run an order of magnitude slower.
ONE_THREAD = ("--threads", "1")


@pytest.fixture(scope="module")
def serial_ref() -> Iterator[ReferenceProcess]:
    with ReferenceProcess(mode="serial", extra_args=ONE_THREAD) as ref:
        yield ref


@pytest.fixture(scope="module")
def thermostat_ref() -> Iterator[ReferenceProcess]:
    with ReferenceProcess(
        mode="thermostat", temperature=THERMOSTAT_T, extra_args=ONE_THREAD
    ) as ref:
        yield ref


@pytest.fixture(scope="module")
def batched_ref() -> Iterator[ReferenceProcess]:
    with ReferenceProcess(mode="batched", extra_args=ONE_THREAD) as ref:
        yield ref


class Proxy:
    def __init__(self, app: web.Application, url: str) -> None:
        self.app = app
        self.url = url
        self.tap: ShadowTap = app[SHADOW]
        self.clients: list[AsyncOpenAI] = []

    def client(self) -> AsyncOpenAI:
        oai = AsyncOpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=300)
        self.clients.append(oai)  # closed by the fixture
        return oai

    async def report(self) -> dict[str, Any]:
        assert await self.tap.idle(600.0)
        async with httpx.AsyncClient() as http:
            return dict((await http.get(self.url + "/tbg")).json())


async def start_proxy(base_url: str, **shadow: Any) -> tuple[Proxy, web.AppRunner]:
    config = build_config(
        {
            "upstreams": [{"name": "reference", "base_url": base_url, "models": ["smollm2"]}],
            "shadow": {"enabled": True, "sample_rate": 1.0, "replays_per_minute": 1e6,
                       "tokens_per_minute": 1e9, "max_concurrent": 2, **shadow},
        },
        {},
    )  # fmt: skip
    app = make_app(config)
    runner = make_runner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return Proxy(app, f"http://127.0.0.1:{runner.addresses[0][1]}"), runner


@pytest.fixture
async def proxy_factory() -> AsyncIterator[Any]:
    made: list[tuple[Proxy, web.AppRunner]] = []

    async def factory(base_url: str, **shadow: Any) -> Proxy:
        proxy, runner = await start_proxy(base_url, **shadow)
        made.append((proxy, runner))
        return proxy

    yield factory
    for proxy, runner in made:
        for oai in proxy.clients:
            await oai.close()
        await runner.cleanup()


async def chat(oai: AsyncOpenAI, prompt: str, max_tokens: int, stream: bool = False) -> str:
    messages: Any = [{"role": "user", "content": prompt}]
    if not stream:
        out = await oai.chat.completions.create(model="smollm2", messages=messages, temperature=0,
                                                max_tokens=max_tokens)  # fmt: skip
        return out.choices[0].message.content or ""
    parts = []
    events = await oai.chat.completions.create(model="smollm2", messages=messages, temperature=0,
                                               max_tokens=max_tokens, stream=True)  # fmt: skip
    async for chunk in events:
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
    return "".join(parts)


async def test_serial_upstream_never_diverges_and_the_upper_bound_shrinks(
    serial_ref: ReferenceProcess, proxy_factory: Any
) -> None:
    proxy: Proxy = await proxy_factory(serial_ref.base_url, replays=2)
    oai = proxy.client()
    # concurrent primaries: a serial stack stays deterministic whatever the load
    await asyncio.gather(*(chat(oai, p, 16, stream=i % 2 == 1) for i, p in enumerate(PROMPTS[:2])))
    early = (await proxy.report())["estimates"][0]
    await asyncio.gather(*(chat(oai, p, 16, stream=i % 2 == 1) for i, p in enumerate(PROMPTS[2:])))
    late = (await proxy.report())["estimates"][0]
    assert early["diverged"] == 0 and late["diverged"] == 0
    # Wave 1's primaries were sent before a replay proved logprobs support: text-only, so only
    # their two replays are compared (1 pair each). Wave 2's primaries are augmented: 3 pairs each.
    assert early["pairs"] == 2
    assert late["pairs"] == 2 + 3 * (len(PROMPTS) - 2)
    assert early["estimate"] == 0.0 and late["estimate"] == 0.0
    assert 0 < late["upper"] < early["upper"] < float("inf"), (early["upper"], late["upper"])
    assert late["p_identical"] == 1.0  # bit-identical logprobs at every shared position


async def test_thermostat_interval_contains_the_true_temperature(
    thermostat_ref: ReferenceProcess, proxy_factory: Any
) -> None:
    proxy: Proxy = await proxy_factory(thermostat_ref.base_url, replays=3)
    oai = proxy.client()
    await asyncio.gather(*(chat(oai, p, 16) for p in PROMPTS))
    est = (await proxy.report())["estimates"][0]
    assert est["method"] == "likelihood"
    assert est["diverged"] > 0
    assert 0 < est["lower"] < est["estimate"] < est["upper"] < 1, est
    # One draw of a 95 % interval misses 1 time in 20 by design (CI saw an estimate of 0.18 once,
    # while 9 further runs gave 0.26-0.35): the containment is asserted on the 99.9 % interval of
    # the same (undecayed) statistics the proxy exports, so a failure here means a real bias.
    # Coverage at the stated 95 % is measured over many repetitions in docs/coverage.md.
    stats = functools.reduce(operator.add, (s for _, s in proxy.tap.view().counters()))
    wide = estimate_from_stats(stats, level=0.999)
    assert wide.lower <= THERMOSTAT_T <= wide.upper, (wide, est)


async def test_batched_upstream_diverges_under_load_and_load_buckets_show_it(
    batched_ref: ReferenceProcess, proxy_factory: Any
) -> None:
    # Primaries are decoded together in one padded bf16 batch; the replays go out one at a time
    # (max_concurrent 1), so each meets a different batch composition than its primary did.
    proxy: Proxy = await proxy_factory(batched_ref.base_url, replays=1, max_concurrent=1)
    oai = proxy.client()
    await chat(oai, PROMPTS[0], 8)  # alone; its replay proves logprobs support
    await proxy.report()
    for _ in range(2):
        await asyncio.gather(*(chat(oai, p, 32) for p in PROMPTS))
    report = await proxy.report()
    est = report["estimates"][0]
    assert est["diverged"] > 0, est
    assert est["estimate"] > 0
    assert len(est["by_load"]) >= 2, est["by_load"]  # trials landed in more than one load bucket
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(proxy.url + "/metrics")).text
    compared = {
        bucket: float(value)
        for bucket, value in re.findall(
            r'tbg_pairs_compared_total\{load_bucket="([^"]+)",[^}]*\} (\S+)', metrics
        )
    }
    assert set(compared) == {"1", "2", "4", "8", "16", "32", "64+"}  # all exported, primed at 0
    assert sum(1 for v in compared.values() if v > 0) >= 2, compared
    assert sum(compared.values()) == est["pairs"]
    assert report["exemplars"], "divergences leave exemplars"


def _normalise(body: bytes) -> bytes:
    """ids and creation times differ per call by design; everything else must be equal."""
    body = re.sub(rb'"id":"[^"]*"', b'"id":"X"', body)
    return re.sub(rb'"created":\d+', b'"created":0', body)


@pytest.mark.parametrize("stream", [False, True])
async def test_sampled_primaries_are_byte_identical_to_direct_calls(
    serial_ref: ReferenceProcess, proxy_factory: Any, stream: bool
) -> None:
    proxy: Proxy = await proxy_factory(serial_ref.base_url, replays=1)
    body = {"model": "smollm2", "messages": [{"role": "user", "content": PROMPTS[0]}],
            "temperature": 0, "max_tokens": 12, "stream": stream}  # fmt: skip
    async with httpx.AsyncClient(timeout=300) as http:
        await http.post(proxy.url + "/v1/chat/completions", json=body)  # detects logprobs support
        await proxy.report()
        via_proxy = (await http.post(proxy.url + "/v1/chat/completions", json=body)).content
        direct = (await http.post(serial_ref.base_url + "/chat/completions", json=body)).content
    report = await proxy.report()
    assert report["accounting"]["sampled"] == 2 == report["accounting"]["replayed"]
    assert b'"logprobs":null' in direct
    assert _normalise(via_proxy) == _normalise(direct)
    if not stream:
        assert orjson.loads(via_proxy)["choices"][0]["logprobs"] is None


SCRIPTS = [  # answers made of byte-level pieces that all read '\ufffd' (estimator/tokens.py)
    "用两句话介绍一下长城。",
    "日本の四季について短く説明してください。",
    "Reply with three emoji that describe a day at the beach (like 🌊).",
    "Translate 'Good morning, how are you?' into Spanish and French.",
]


async def test_answers_in_other_scripts_do_not_raise_t_on_a_deterministic_stack(
    serial_ref: ReferenceProcess, proxy_factory: Any
) -> None:
    """CJK, emoji and accented answers through the live path (plain and streamed): a serial stack
    never diverges, so T̂ = 0 with an upper bound that these 13 pairs already hold low (0.064
    when written). Keyed by text, a chosen piece took another piece's logprob, and the upper
    bound sat at the top of the grid (1.0) although every replay reproduced its primary."""
    # Two replays: trials of three runs take the general trie walk, where text keys matched a
    # chosen piece against every alternative of the same text.
    proxy: Proxy = await proxy_factory(serial_ref.base_url, replays=2)
    oai = proxy.client()
    # Logprobs are added to a primary once replays proved support and a plain answer of the same
    # shape was seen: one plain and one streamed warm-up make every scripted primary augmented.
    for stream in (False, True):
        await chat(oai, PROMPTS[2], 4, stream=stream)
        await proxy.report()
    before = (await proxy.report())["estimates"][0]["pairs"]
    for i, p in enumerate(SCRIPTS):
        await chat(oai, p, 16, stream=i % 2 == 1)
    est = (await proxy.report())["estimates"][0]
    assert est["method"] == "likelihood"
    assert est["diverged"] == 0 and est["pairs"] - before == 3 * len(SCRIPTS), est
    assert est["estimate"] == 0.0, est
    assert est["upper"] < 0.25, est
