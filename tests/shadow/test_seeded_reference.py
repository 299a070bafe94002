"""Seeded sampling end to end: the real openai SDK sends requests at temperature 0.7 with an
integer `seed` through the real proxy to the real reference LLM (SmolLM2 on CPU, `serial` mode:
batch size 1, and a request's seed drives its sampler, reference/policy.py make_generator). Each
is sampled, replayed with the primary's own seed and temperature, and compared under `seeded`; a
deterministic stack that honours the seed reproduces every run, so the exact-match rate is 1. The
greedy T_bg never sees them."""

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
from tests.integration.recorder import Recorder, chat_prompt

pytestmark = [pytest.mark.reference, pytest.mark.slow]

PROMPTS = ["Write a short poem about the sea.", "Explain what a hash table is.",
           "List three uses of copper."]  # fmt: skip
SEEDS = [11, 12, 13]
TEMPERATURE = 0.7
MAX_TOKENS = 12
ONE_THREAD = ("--threads", "1")  # the other core runs the proxy, the clients and the estimator


@pytest.fixture(scope="module")
def serial_ref() -> Iterator[ReferenceProcess]:
    with ReferenceProcess(mode="serial", extra_args=ONE_THREAD) as ref:
        yield ref


@pytest.fixture
async def proxy(serial_ref: ReferenceProcess) -> AsyncIterator[tuple[ShadowTap, str, Recorder]]:
    with Recorder(serial_ref.base_url) as rec:
        config = build_config(
            {
                "upstreams": [{"name": "reference", "base_url": rec.base_url,
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
            yield app[SHADOW], f"http://127.0.0.1:{runner.addresses[0][1]}", rec
        finally:
            await runner.cleanup()


async def _report(tap: ShadowTap, url: str) -> dict[str, Any]:
    assert await tap.idle(600.0)
    async with httpx.AsyncClient() as http:
        return dict((await http.get(url + "/tbg")).json())


async def test_seeded_requests_are_replayed_with_their_seed_and_reproduce_exactly(
    proxy: tuple[ShadowTap, str, Recorder],
) -> None:
    tap, url, rec = proxy
    async with AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=300) as oai:
        for prompt, seed in zip(PROMPTS, SEEDS, strict=True):
            out = await oai.chat.completions.create(
                model="smollm2", messages=[{"role": "user", "content": prompt}],
                temperature=TEMPERATURE, seed=seed, max_tokens=MAX_TOKENS,
            )  # fmt: skip
            assert out.choices[0].message.content
            await _report(tap, url)  # one at a time: the next primary sees the replays' verdict
    report = await _report(tap, url)
    n = len(PROMPTS)
    assert report["accounting"] == {"sampled": n, "replayed": n, "failed": 0, "dropped": 0}
    assert report["estimates"] == []  # no greedy request: no T_bg, seeded trials never enter it
    assert report["measured"]["seeded"] == {"requests": n, "share": 1.0}
    assert report["measured"]["greedy"]["requests"] == 0
    compared = report["measured"]["compared"]["seeded"]
    assert compared["logprobs"] + compared["text_only"] == n, compared
    (seeded,) = report["seeded"]
    assert (seeded["upstream"], seeded["model_name"]) == ("reference", "smollm2")
    assert seeded["trials"] == n and seeded["diverged_trials"] == 0 and seeded["diverged"] == 0
    # The first primary came before a replay proved logprobs support: text-only, so only its two
    # replays are compared (1 pair); the later primaries are augmented (3 pairs each).
    assert seeded["pairs"] == 1 + 3 * (n - 1), seeded
    assert report["measured"]["compared"]["seeded"] == {"logprobs": n, "text_only": 0}
    assert seeded["exact_match_rate"] == 1 and seeded["hazard"] == 0, seeded
    assert all(c["decoding"] == "seeded" for c in seeded["by_class"]), seeded["by_class"]
    # On the wire: every request the reference saw carries the client's seed and temperature,
    # three per prompt (the primary and its two replays), and every replay's text is the primary's.
    by_prompt: dict[str, list[dict[str, Any]]] = {}
    for ex in rec.exchanges():
        asked = chat_prompt(ex.request)
        if asked is not None:
            assert ex.status == 200
            by_prompt.setdefault(asked, []).append(ex.request)
    assert sorted(by_prompt) == sorted(PROMPTS)
    for prompt, seed in zip(PROMPTS, SEEDS, strict=True):
        sent = by_prompt[prompt]
        assert len(sent) == 3, sent
        assert {(r["seed"], r["temperature"]) for r in sent} == {(seed, TEMPERATURE)}
