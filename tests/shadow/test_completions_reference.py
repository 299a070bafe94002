"""Legacy completions (`/v1/completions`) end to end: the real openai SDK through the real proxy
to the real reference LLM (SmolLM2 on CPU, `serial` mode, deterministic), whole and streamed.
Every primary is sampled, replayed twice and compared under the `completions` route; a serial
stack never diverges, so T_bg is 0."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from aiohttp import web
from openai import AsyncOpenAI

from proxy.app import make_app, make_runner
from proxy.config import build_config
from proxy.shadow.tap import ShadowTap
from proxy.shadow.wiring import SHADOW
from reference.launch import ReferenceProcess

pytestmark = [pytest.mark.reference, pytest.mark.slow]

PROMPTS = ["Once upon a time, in a small village by the sea, there lived",
           "The three most important things to know about healthy sleep are",
           "Here is a simple explanation of how a bicycle works:"]  # fmt: skip
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def serial_ref() -> Iterator[ReferenceProcess]:
    with ReferenceProcess(mode="serial", extra_args=("--threads", "1")) as ref:
        yield ref


@pytest.fixture
async def proxy(serial_ref: ReferenceProcess) -> AsyncIterator[tuple[ShadowTap, str]]:
    config = build_config(
        {
            "upstreams": [{"name": "reference", "base_url": serial_ref.base_url,
                           "models": ["smollm2"]}],
            "shadow": {"enabled": True, "sample_rate": 1.0, "replays": 2,
                       "replays_per_minute": 1e6, "tokens_per_minute": 1e9,
                       "max_concurrent": 1},
        },
        {},
    )  # fmt: skip
    app = make_app(config)
    runner = make_runner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield app[SHADOW], f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def _report(tap: ShadowTap, url: str) -> dict[str, Any]:
    assert await tap.idle(600.0)
    async with httpx.AsyncClient() as http:
        return dict((await http.get(url + "/tbg")).json())


async def test_completions_whole_and_streamed_are_sampled_and_compared(
    proxy: tuple[ShadowTap, str],
) -> None:
    tap, url = proxy
    async with AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=300) as oai:
        for prompt in PROMPTS:
            out = await oai.completions.create(
                model="smollm2", prompt=prompt, temperature=0, max_tokens=MAX_TOKENS
            )
            assert out.choices[0].text
            await _report(tap, url)  # one at a time: the next primary sees the replays' verdict
        events = await oai.completions.create(
            model="smollm2", prompt=PROMPTS[0], temperature=0, max_tokens=MAX_TOKENS, stream=True
        )
        assert "".join([e.choices[0].text async for e in events if e.choices])
    report = await _report(tap, url)
    n = len(PROMPTS) + 1
    assert report["accounting"] == {"sampled": n, "replayed": n, "failed": 0, "dropped": 0}
    (est,) = report["estimates"]
    assert est["trials"] == n and est["diverged"] == 0 and est["estimate"] == 0.0, est
    # The first whole and the streamed primary each came first of their shape, plain (text-only):
    # their two replays are compared (1 pair); the others are augmented (3 pairs each).
    assert est["pairs"] == 1 + 3 + 3 + 1, est
    classes = {(c["route"], c["streaming"]): c for c in est["by_class"]}
    assert set(classes) == {("completions", "whole"), ("completions", "stream")}, classes
    assert sum(c["pairs"] for c in classes.values()) == est["pairs"]
    assert classes[("completions", "stream")]["trials"] == 1
    assert (
        classes[("completions", "whole")]["pairs"],
        classes[("completions", "stream")]["pairs"],
    ) == (7, 1)
    compared = report["measured"]["compared"]["greedy"]
    assert compared["logprobs"] + compared["text_only"] == n, compared
