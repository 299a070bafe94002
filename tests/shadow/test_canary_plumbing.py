"""The live canary's plumbing, over loopback sockets with the real openai SDK as client: two fake
upstreams (the fleet, and a canary whose tie always goes the other way), the Job's replay target,
the accounting, the canary block of GET /tbg, `tbg status` text and the `tbg_canary_*` series."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web
from openai import AsyncOpenAI

from proxy.app import make_app, make_runner
from proxy.config import ConfigError, build_config
from proxy.shadow.tap import ShadowTap
from proxy.shadow.wiring import SHADOW
from proxy.status import render_text
from tests.shadow.conftest import FakeLLM, serve, worker_env

CHAT = {"model": "m", "messages": [{"role": "user", "content": "canary prompt"}], "temperature": 0}


class Canary:
    def __init__(self, fleet: FakeLLM, canary: FakeLLM, url: str, tap: ShadowTap) -> None:
        self.fleet, self.canary, self.url, self.tap = fleet, canary, url, tap

    async def get(self, path: str) -> httpx.Response:
        async with httpx.AsyncClient() as http:
            return await http.get(self.url + path)


@pytest.fixture
async def canary_stack() -> AsyncIterator[Any]:
    runners: list[web.AppRunner] = []

    async def factory(share: float = 0.5, **shadow: Any) -> Canary:
        fleet = FakeLLM()
        canary = FakeLLM(flip_replays=set(range(1000)))  # every canary answer takes " B"
        fleet_url, r1 = await serve(fleet.app())
        canary_url, r2 = await serve(canary.app())
        runners.extend((r1, r2))
        raw = {
            "upstreams": [
                {"name": "fleet", "base_url": f"{fleet_url}/v1", "models": ["m"]},
                {"name": "cand", "base_url": f"{canary_url}/v1"},
            ],
            "shadow": {"enabled": True, "sample_rate": 1.0, "replays": 2,
                       "replays_per_minute": 1e6, "tokens_per_minute": 1e9,
                       "canary": {"m": {"upstream": "cand", "share": share}}, **shadow},
        }  # fmt: skip
        app = make_app(build_config(raw, {**worker_env()}))
        proxy_url, pr = await serve(app, make_runner(app))
        runners.append(pr)
        return Canary(fleet, canary, proxy_url, app[SHADOW])

    yield factory
    for runner in reversed(runners):
        await runner.cleanup()


async def _drive(stack: Canary, n: int) -> dict[str, Any]:
    async with AsyncOpenAI(base_url=stack.url + "/v1", api_key="sk", max_retries=0) as oai:
        for _ in range(n):
            out = await oai.chat.completions.create(**CHAT)  # type: ignore[call-overload]
            assert out.choices[0].message.content == "Hello, world A!"  # the fleet's answer
            assert await stack.tap.idle(20.0)
    report: dict[str, Any] = (await stack.get("/tbg")).json()
    return report


@pytest.mark.parametrize("worker", ["inline", "process"])
async def test_canary_trials_go_to_the_canary_and_stay_out_of_the_fleet(
    canary_stack: Any, worker: str
) -> None:
    stack: Canary = await canary_stack(share=0.5, worker=worker)
    metrics = (await stack.get("/metrics")).text
    assert 'tbg_canary_trials_total{canary="cand",model_name="m",upstream="fleet"} 0.0' in metrics
    report = await _drive(stack, 4)
    # sampled = replayed + dropped + failed, canary trials included
    assert report["accounting"] == {"sampled": 4, "replayed": 4, "failed": 0, "dropped": 0}
    # Every other sampled trial (share 0.5, in a fixed stride) went to the canary: its replays
    # reached the canary upstream only, the others' the fleet.
    fleet_replays = [c for c in stack.fleet.calls if "max_tokens" in c]
    canary_calls = stack.canary.calls
    assert len(fleet_replays) == 4 and len(canary_calls) == 4
    assert all("max_tokens" in c for c in canary_calls)  # the canary serves no primary
    # The fleet's estimator holds its two ordinary trials only: trial 1 (its primary text-only,
    # before logprobs support was known: 1 pair of replays) and trial 3 (3 runs, 3 pairs). Had a
    # canary trial entered it, the canary's " B" would show as divergences.
    (est,) = report["estimates"]
    assert est["upstream"] == "fleet" and est["trials"] == 2
    assert est["pairs"] == 4 and est["diverged"] == 0
    (c,) = report["canary"]
    assert (c["upstream"], c["canary"], c["model_name"], c["share"]) == ("fleet", "cand", "m", 0.5)
    assert c["fleet_tbg"]["pairs"] == 4
    # The canary agrees with itself (T_bg 0: one pair of replays per trial, none diverged) and
    # moves every answer at the tie, token 3.
    assert c["canary_tbg"]["pairs"] == 2 and c["canary_tbg"]["diverged"] == 0
    assert c["canary_tbg"]["estimate"] == 0.0
    cross = c["cross"]
    assert (cross["trials"], cross["moved"], cross["rate"]) == (2, 2, 1.0)
    assert (cross["pairs"], cross["pairs_moved"]) == (4, 4)
    assert 0.3 < cross["lower"] < 1.0 == cross["upper"]  # Wilson 95 %, 2 of 2 prompts
    assert cross["first_divergence"]["median"] == 3 and cross["first_divergence"]["mean"] == 3
    assert cross["first_divergence"]["histogram"]["4"] == 4
    latency = c["latency"]
    assert latency["primary"]["median_seconds"] > 0 and latency["canary"]["median_seconds"] > 0
    assert latency["ratio_median"] > 0

    metrics = (await stack.get("/metrics")).text
    labels = 'canary="cand",model_name="m",upstream="fleet"'
    assert f"tbg_canary_trials_total{{{labels}}} 2.0" in metrics
    assert f"tbg_canary_moved_trials_total{{{labels}}} 2.0" in metrics
    assert f"tbg_canary_cross_diverged_total{{{labels}}} 4.0" in metrics
    side = 'canary="cand",model_name="m",side="{}",upstream="fleet"'
    assert f"tbg_canary_latency_seconds_count{{{side.format('canary')}}} 4.0" in metrics
    assert f"tbg_canary_latency_seconds_count{{{side.format('primary')}}} 2.0" in metrics
    # the fleet's own series hold no canary trial
    assert re.search(r'tbg_trials_total\{load_bucket="1",model_name="m",upstream="fleet"\} 2.0',
                     metrics)  # fmt: skip
    # the documented series budget per (fleet, canary, model)
    series = [ln for ln in metrics.splitlines() if ln.startswith("tbg_canary_")]
    assert len(series) == 120, len(series)

    text = render_text(report)
    assert "canary cand for fleet / m" in text
    assert "2 of 2 prompts" in text


async def test_share_one_sends_every_trial_to_the_canary(canary_stack: Any) -> None:
    stack: Canary = await canary_stack(share=1.0)
    report = await _drive(stack, 3)
    assert report["accounting"]["sampled"] == 3 == report["accounting"]["replayed"]
    assert not [c for c in stack.fleet.calls if "max_tokens" in c]  # no replay loads the fleet
    assert report["estimates"] == []  # the fleet's T_bg has no trial
    (c,) = report["canary"]
    assert c["cross"]["trials"] == 3 and c["fleet_tbg"] is None
    # No ordinary replay ever proved the fleet's logprobs support, so its primaries were not
    # augmented: they are compared with the canary's answers on text tokens ("Hello," "world"
    # "A!"), where the tie is the third piece, not on the canary's real tokens (position 3).
    assert c["cross"]["moved"] == 3 and c["cross"]["first_divergence"]["median"] == 2
    assert c["canary_tbg"]["pairs"] == 3 and c["canary_tbg"]["diverged"] == 0
    assert "no ordinary trials" in render_text(report)


async def test_failed_canary_replays_are_failed_trials(canary_stack: Any) -> None:
    stack: Canary = await canary_stack(share=1.0)
    stack.canary.fail_replays = lambda _i: True
    report = await _drive(stack, 2)
    assert report["accounting"] == {"sampled": 2, "replayed": 0, "failed": 2, "dropped": 0}
    assert report["canary"][0]["cross"]["trials"] == 0


UPSTREAMS = [
    {"name": "fleet", "base_url": "http://127.0.0.1:9/v1", "models": ["m"]},
    {"name": "cand", "base_url": "http://127.0.0.1:10/v1"},
]


@pytest.mark.parametrize(
    ("canary", "message"),
    [
        ({"m": {"upstream": "nope"}}, "shadow.canary.m.upstream: no upstream named 'nope'"),
        ({"m": {"upstream": "fleet"}}, "'fleet' already serves 'm': a canary is another upstream"),
        ({"x": {"upstream": "cand"}}, "shadow.canary.x: no upstream serves model 'x'"),
        ({"m": {"upstream": "cand", "share": 1.5}}, "shadow.canary.m.share"),
        ({"m": {"share": 0.5}}, "shadow.canary.m.upstream: required"),
        ({"m": {"upstream": "cand", "replays": 3}}, "shadow.canary.m"),
    ],
)
def test_bad_canary_config_is_refused_at_load(canary: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_config({"upstreams": UPSTREAMS, "shadow": {"canary": canary}}, {})
    assert message in str(err.value)


def test_canary_config_is_read() -> None:
    config = build_config(
        {"upstreams": UPSTREAMS, "shadow": {"canary": {"m": {"upstream": "cand", "share": 1}}}},
        {},
    )
    policy = config.shadow_config.canary["m"]
    assert (policy.upstream, policy.share) == ("cand", 1.0)


async def test_canary_replays_do_not_load_the_fleet(canary_stack: Any) -> None:
    """A canary replay in flight counts on the canary upstream, never on the fleet, so the fleet's
    primaries (and its load buckets) do not see it."""
    stack: Canary = await canary_stack(share=1.0)
    stack.canary.replay_delay = 0.5
    seen: list[tuple[int, int, int]] = []
    async with AsyncOpenAI(base_url=stack.url + "/v1", api_key="sk", max_retries=0) as oai:
        await oai.chat.completions.create(**CHAT)  # type: ignore[call-overload]
        load = stack.tap.load
        for _ in range(200):
            seen.append((load.replays_in_flight(), load.current("cand"), load.current("fleet")))
            if seen[-1][0]:
                break
            await asyncio.sleep(0.01)
        assert await stack.tap.idle(20.0)
    assert seen[-1] == (1, 1, 0), seen[-1]  # one canary replay in flight, none on the fleet
