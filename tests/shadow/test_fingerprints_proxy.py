"""Backend fingerprints through the real proxy, the real openai SDK as client: an upstream whose
system_fingerprint changes midway, and whose randomness changes with it (fault injection)."""

from __future__ import annotations

from typing import Any

import httpx
from openai import AsyncOpenAI

from tests.shadow.conftest import FakeLLM, Stack


def client(stack: Stack) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=stack.proxy_url, api_key="sk-client", max_retries=0)


async def get(stack: Stack, path: str) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.get(stack.proxy_url.removesuffix("/v1") + path)


async def ask(oai: AsyncOpenAI, stream: bool) -> str | None:
    """One greedy request; the fingerprint the client itself received."""
    messages: list[Any] = [{"role": "user", "content": "hi"}]
    if not stream:
        out = await oai.chat.completions.create(model="m", messages=messages, temperature=0)
        return out.system_fingerprint
    seen: str | None = None
    chunks = await oai.chat.completions.create(
        model="m", messages=messages, temperature=0, stream=True
    )
    async for chunk in chunks:
        seen = chunk.system_fingerprint or seen
    return seen


async def test_a_backend_change_is_counted_with_both_epochs_estimates(make_stack: Any) -> None:
    fake = FakeLLM(fingerprint="fp_a1")
    stack: Stack = await make_stack(fake)
    async with client(stack) as oai:
        for i in range(12):  # backend A: replays always agree
            assert await ask(oai, stream=i % 3 == 0) == "fp_a1"  # forwarded untouched
        assert await stack.tap.idle(20.0)
        # backend B: a new build whose replays split at the near-tie every other replay
        fake.fingerprint = "fp_b2"
        fake.flip_replays = set(range(fake.replays, fake.replays + 1000, 2))
        for i in range(40):
            assert await ask(oai, stream=i % 3 == 0) == "fp_b2"
        assert await stack.tap.idle(20.0)

    (est,) = (await get(stack, "/tbg")).json()["estimates"]
    fps = est["fingerprints"]
    assert fps["changes"] == 1
    before, after = fps["previous"], fps["current"]
    assert (before["fingerprint"], after["fingerprint"]) == ("fp_a1", "fp_b2")
    assert before["trials"] == 12 and after["trials"] == 40
    assert fps["trials_by_fingerprint"] == {"fp_a1": 12, "fp_b2": 40}
    assert fps["mixed_trials"] == 0 and fps["unknown_trials"] == 0
    assert before["diverged"] == 0 < after["diverged"]  # each epoch estimated from its own runs
    assert after["until"] is None and before["until"] == after["since"] == fps["last_change_at"]
    for epoch in (before, after):
        assert epoch["lower"] is not None and epoch["upper"] is not None
        assert epoch["lower"] <= epoch["estimate"] <= epoch["upper"]
    assert est["pairs"] > after["pairs"] > 0  # the overall estimate still pools both

    metrics = (await get(stack, "/metrics")).text
    um = 'model_name="m",upstream="fake"'
    assert f"tbg_backend_fingerprint_changes_total{{{um}}} 1.0" in metrics
    assert f'tbg_backend_fingerprint_info{{fingerprint="fp_b2",{um}}} 1.0' in metrics
    assert 'fingerprint="fp_a1"' not in metrics  # the info series: the current one only
    for epoch in ("current", "previous"):
        for name in ("", "_lower", "_upper"):
            assert f'tbg_temperature_by_epoch{name}{{epoch="{epoch}",{um}}}' in metrics
    assert f'tbg_trials_by_epoch{{epoch="previous",{um}}} 12.0' in metrics
    assert f'tbg_trials_by_epoch{{epoch="current",{um}}} 40.0' in metrics
    per_model = [ln for ln in metrics.splitlines() if ln.startswith("tbg_") and um in ln]
    assert len(per_model) <= 400, len(per_model)  # the series budget (docs/monitoring.md)

    text = (await get(stack, "/tbg?format=text")).text
    (line,) = [ln for ln in text.splitlines() if ln.startswith("  backend ")]
    assert "fp_b2, 40 trials; changed 1x, from fp_a1: T_bg before" in line


async def test_an_upstream_without_fingerprints_shows_none(make_stack: Any) -> None:
    stack: Stack = await make_stack(FakeLLM())
    async with client(stack) as oai:
        for i in range(3):
            assert await ask(oai, stream=i == 1) is None
    assert await stack.tap.idle(20.0)
    (est,) = (await get(stack, "/tbg")).json()["estimates"]
    assert est["fingerprints"] is None and est["pairs"] > 0
    metrics = (await get(stack, "/metrics")).text
    assert "tbg_backend_fingerprint_info{" not in metrics
    assert "tbg_backend_fingerprint_changes_total{" not in metrics
    assert "  backend " not in (await get(stack, "/tbg?format=text")).text
