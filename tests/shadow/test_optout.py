"""`X-TBG-Replay: never | always` through the real proxy, with the openai SDK's `extra_headers`."""

from __future__ import annotations

import random
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI

from proxy.shadow.config import parse_shadow_config
from proxy.shadow.optout import replay_choice
from proxy.shadow.sampling import Sampler
from tests.shadow.conftest import FakeLLM, Stack

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}


def client(stack: Stack) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=stack.proxy_url, api_key="sk-client", max_retries=0)


async def settle(stack: Stack) -> dict[str, Any]:
    assert await stack.tap.idle(20.0)
    async with httpx.AsyncClient() as http:
        return dict((await http.get(stack.proxy_url.removesuffix("/v1") + "/tbg")).json())


def primaries(fake: FakeLLM) -> list[dict[str, str]]:
    """Headers of the requests the upstream saw that were primaries (replays set max_tokens)."""
    return [h for c, h in zip(fake.calls, fake.headers, strict=True) if "max_tokens" not in c]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("never", "never"), ("NEVER ", "never"), ("always", "always"), ("Always", "always"),
     ("sometimes", None), ("", None)],
)  # fmt: skip
def test_header_values(value: str, expected: str | None) -> None:
    assert replay_choice({"X-TBG-Replay": value}) == expected
    assert replay_choice({"x-tbg-replay": value}) == expected
    assert replay_choice({}) is None


async def test_never_is_not_replayed_and_counted_as_opted_out(make_stack: Any) -> None:
    stack: Stack = await make_stack(FakeLLM(), {"sample_rate": 1.0})
    async with client(stack) as oai:
        for _ in range(3):
            out = await oai.chat.completions.create(**CHAT, extra_headers={"X-TBG-Replay": "never"})
            assert out.choices[0].message.content == "Hello, world A!"
        await oai.chat.completions.create(**CHAT)  # no header: replayed as usual
    report = await settle(stack)
    assert report["accounting"] == {"sampled": 4, "replayed": 1, "failed": 0, "dropped": 3}
    assert report["dropped_by_reason"] == {"opted_out": 3}
    replays = [c for c in stack.fake.calls if "max_tokens" in c]
    assert len(replays) == 2  # the one request without the header, k = 2
    # the header is the proxy's: the upstream never sees it
    assert len(primaries(stack.fake)) == 4
    assert all(k.lower() != "x-tbg-replay" for h in stack.fake.headers for k in h)
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(stack.proxy_url.removesuffix("/v1") + "/metrics")).text
    assert (
        'tbg_shadow_dropped_total{model_name="m",reason="opted_out",upstream="fake"} 3.0' in metrics
    )


async def test_always_is_sampled_whatever_the_rate(make_stack: Any) -> None:
    stack: Stack = await make_stack(FakeLLM(), {"sample_rate": 0.0})
    async with client(stack) as oai:
        for _ in range(2):
            await oai.chat.completions.create(**CHAT, extra_headers={"X-TBG-Replay": "always"})
        await oai.chat.completions.create(**CHAT)  # rate 0: not sampled
        # `always` makes a request eligible only if it is greedy
        await oai.chat.completions.create(
            **{**CHAT, "temperature": 0.7}, extra_headers={"X-TBG-Replay": "always"}
        )
    report = await settle(stack)
    assert report["accounting"] == {"sampled": 2, "replayed": 2, "failed": 0, "dropped": 0}
    assert len([c for c in stack.fake.calls if "max_tokens" in c]) == 4
    assert all(k.lower() != "x-tbg-replay" for h in stack.fake.headers for k in h)


async def test_always_still_obeys_the_replay_budget(make_stack: Any) -> None:
    # 2 replays a minute with k = 2: the bucket holds one trial; the second `always` is refused.
    stack: Stack = await make_stack(
        FakeLLM(), {"sample_rate": 0.0, "replays_per_minute": 2.0, "replays": 2}
    )
    async with client(stack) as oai:
        for _ in range(2):
            await oai.chat.completions.create(**CHAT, extra_headers={"X-TBG-Replay": "always"})
    report = await settle(stack)
    assert report["accounting"] == {"sampled": 2, "replayed": 1, "failed": 0, "dropped": 1}
    assert report["dropped_by_reason"] == {"rate_limit": 1}


def test_never_takes_no_budget_and_follows_the_coin() -> None:
    config = parse_shadow_config({"sample_rate": 0.25, "replays_per_minute": 1e6})
    sampler = Sampler(config, rng=random.Random(7))
    decisions = [sampler.decide("m", "never") for _ in range(4000)]
    opted = sum(d.sampled for d in decisions)
    assert all(d.dropped_reason == "opted_out" for d in decisions if d.sampled)
    assert 900 < opted < 1100  # ≈ 0.25 × 4000: what the opt-outs cost the estimate
