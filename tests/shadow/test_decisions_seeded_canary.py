"""Decisions of seeded trials and of canary trials, through the real proxy with the real openai SDK
as client and fake upstreams with planted tool flips (tests.shadow.test_decisions_proxy's
DecisionLLM): seeded trials' decisions are reported under `seeded`, never in the greedy
`decisions`; a canary that calls another tool for known prompts shows that share as its
cross-decisions, exactly, while the fleet's own decisions count the fleet's replays only."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from aiohttp import web
from openai import AsyncOpenAI

from proxy.app import make_app, make_runner
from proxy.config import build_config
from proxy.shadow.tap import ShadowTap
from proxy.shadow.wiring import SHADOW
from proxy.status import render_text
from tests.shadow.conftest import serve, worker_env
from tests.shadow.test_decisions_proxy import TOOLS, DecisionLLM

PROMPTS = 24


def _fake(q: dict[str, float], seed: int) -> DecisionLLM:
    return DecisionLLM(q, dict.fromkeys(q, "tool"), seed)


def _planted(fake: DecisionLLM, prompts: set[str]) -> tuple[int, int]:
    """(replays, flipped replays) the fake answered for `prompts`."""
    runs = [f for p, flips in fake.planted.items() if p in prompts for f in flips]
    return len(runs), sum(runs)


@pytest.fixture
async def stack() -> AsyncIterator[Callable[..., Any]]:
    runners: list[web.AppRunner] = []

    async def factory(
        fleet: DecisionLLM, canary: DecisionLLM | None = None
    ) -> tuple[str, ShadowTap]:
        ups: list[dict[str, Any]] = []
        for name, fake in (("fleet", fleet), ("cand", canary)):
            if fake is not None:
                base, runner = await serve(fake.app())
                runners.append(runner)
                ups.append({"name": name, "base_url": f"{base}/v1"})
        ups[0]["models"] = ["m"]
        shadow: dict[str, Any] = {
            "enabled": True, "sample_rate": 1.0, "replays": 2, "replays_per_minute": 1e6,
            "tokens_per_minute": 1e9, "logprobs": "no", "decision_steps": [1, 10],
        }  # fmt: skip
        if canary is not None:
            shadow["canary"] = {"m": {"upstream": "cand", "share": 0.5}}
        app = make_app(build_config({"upstreams": ups, "shadow": shadow}, {**worker_env()}))
        url, runner = await serve(app, make_runner(app))
        runners.append(runner)
        return url, app[SHADOW]

    yield factory
    for runner in reversed(runners):
        await runner.cleanup()


async def _ask(
    url: str, tap: ShadowTap, seeded: frozenset[int] = frozenset()
) -> tuple[dict[str, Any], str]:
    async with AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0) as oai:
        for i in range(PROMPTS):
            sampling: dict[str, Any] = {"temperature": 0}
            if i in seeded:
                sampling = {"temperature": 0.7, "seed": 11}
            out = await oai.chat.completions.create(
                model="m", messages=[{"role": "user", "content": f"p{i}"}],
                tools=TOOLS,  # type: ignore[arg-type]
                **sampling,
            )  # fmt: skip
            assert out.choices[0].message.tool_calls[0].function.name == "get_weather"  # type: ignore[union-attr,index]
    assert await tap.idle(30.0)
    async with httpx.AsyncClient() as http:
        report: dict[str, Any] = (await http.get(url + "/tbg")).json()
        metrics = (await http.get(url + "/metrics")).text
    return report, metrics


def _counter(metrics: str, name: str, decision: str) -> float:
    labels = f'canary="cand",decision="{decision}",model_name="m",upstream="fleet"'
    match = re.search(rf"^{name}_total{{{labels}}} (\S+)$", metrics, re.M)
    assert match is not None, (name, decision)
    return float(match.group(1))


async def test_seeded_tool_decisions_are_reported_apart(stack: Any) -> None:
    # every prompt flips its replays' tool with probability 0.5 (seeded, the draws are fixed)
    fake = _fake({f"p{i}": 0.5 for i in range(PROMPTS)}, seed=3)
    url, tap = await stack(fake)
    seeded = frozenset(range(0, PROMPTS, 3))  # 8 seeded prompts, 16 greedy
    report, _ = await _ask(url, tap, seeded)
    greedy_prompts = {f"p{i}" for i in range(PROMPTS) if i not in seeded}
    seeded_prompts = {f"p{i}" for i in seeded}
    g_replays, g_flipped = _planted(fake, greedy_prompts)
    s_replays, s_flipped = _planted(fake, seeded_prompts)
    assert (g_replays, s_replays) == (32, 16)
    assert 0 < s_flipped < s_replays and 0 < g_flipped < g_replays  # the draws flip some, not all

    (est,) = report["estimates"]
    d = est["decisions"]  # the greedy trials alone
    assert (d["trials"], d["replays"]) == (16, 32)
    assert (d["tool"]["compared"], d["tool"]["changed"]) == (32, g_flipped)

    (entry,) = report["seeded"]
    assert entry["trials"] == 8
    s = entry["decisions"]
    assert (s["trials"], s["replays"]) == (8, 16)
    assert (s["tool"]["compared"], s["tool"]["changed"]) == (16, s_flipped)
    assert s["tool"]["lower"] <= s_flipped / 16 <= s["tool"]["upper"]
    assert [c["steps"] for c in s["any"]["compounded"]] == [1, 10]
    (cls,) = s["by_class"]
    assert (cls["decoding"], cls["kind"], cls["trials"]) == ("seeded", "tools", 8)
    assert cls["tool"]["changed"] == s_flipped

    text = render_text(report)
    assert "seeded decisions 8 tools/json trials" in text
    assert f"another tool     {s['tool']['rate']:.3g}" in text
    assert f"({s_flipped} of 16 replays, 8 trials)" in text


async def test_a_canary_that_calls_another_tool_shows_its_cross_decisions(stack: Any) -> None:
    # the fleet's replays flip with probability 0.3; the canary's always call another tool for
    # prompts p0..p11 and never for the rest
    fleet = _fake({f"p{i}": 0.3 for i in range(PROMPTS)}, seed=4)
    canary = _fake({f"p{i}": 1.0 if i < 12 else 0.0 for i in range(PROMPTS)}, seed=5)
    url, tap = await stack(fleet, canary)
    report, metrics = await _ask(url, tap)

    canary_prompts = set(canary.planted)  # share 0.5: every other sampled primary
    assert len(canary_prompts) == 12 and not canary_prompts & set(fleet.planted)
    moved = {p for p in canary_prompts if int(p[1:]) < 12}
    c_replays, c_flipped = _planted(canary, canary_prompts)
    assert (c_replays, c_flipped) == (24, 2 * len(moved)) and 0 < len(moved) < 12

    (c,) = report["canary"]
    d = c["decisions"]
    assert d["against"] == "fleet primary" and (d["trials"], d["replays"]) == (12, 24)
    assert (d["tool"]["compared"], d["tool"]["changed"]) == (24, c_flipped)
    assert (d["any"]["changed"], d["any"]["compared"]) == (c_flipped, 24)
    assert d["tool"]["lower"] <= c_flipped / 24 <= d["tool"]["upper"]
    assert d["tool"]["design_effect"] > 1  # a prompt's replays move together: clustered interval

    # /metrics: the same counts, 6 series (2 families × 3 decisions)
    assert _counter(metrics, "tbg_canary_decision_replays", "tool") == 24
    assert _counter(metrics, "tbg_canary_decision_changed", "tool") == c_flipped
    assert _counter(metrics, "tbg_canary_decision_changed", "arguments") == 0
    series = [ln for ln in metrics.splitlines() if ln.startswith("tbg_canary_decision_")]
    assert len(series) == 6, series

    # the fleet's own decisions: its own replays only, as planted
    f_replays, f_flipped = _planted(fleet, set(fleet.planted))
    (est,) = report["estimates"]
    f = est["decisions"]
    assert (f["trials"], f["replays"]) == (12, 24) and f_replays == 24
    assert (f["tool"]["compared"], f["tool"]["changed"]) == (24, f_flipped)

    text = render_text(report)
    assert "cross-decisions 12 tools/json trials; canary vs fleet primary" in text
    assert f"({c_flipped} of 24 replays, 12 trials)" in text
