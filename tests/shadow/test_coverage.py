"""What share of the traffic the numbers describe: every request by outcome, in /tbg's `measured`
block, on /metrics and at the head of `tbg status`; seeded trials kept out of T_bg."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
from openai import AsyncOpenAI

from estimator.model import Run, Trial, TrialContext
from estimator.online import OnlineConfig, OnlineEstimator
from proxy.shadow.aggregator import Aggregator
from proxy.shadow.classes import RequestClass
from proxy.shadow.config import ShadowConfig
from proxy.shadow.coverage import Coverage, measured, untapped_requests
from proxy.shadow.eligibility import REASONS
from proxy.shadow.messages import Compared
from proxy.status import render_text
from tests.shadow.conftest import FakeLLM, Stack

KEY = ("u", "m")
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}


def test_untapped_routes_come_from_the_request_counter() -> None:
    samples = [
        ({"route": "chat"}, 5.0),
        ({"route": "embeddings"}, 3.0),
        ({"route": "other"}, 1.0),
        ({"route": "models"}, 7.0),  # the model list is not traffic
        ({"route": "responses"}, 2.0),  # a replayable route: the Tap judges those
    ]
    assert untapped_requests(samples) == 4


def test_the_measured_block_adds_up() -> None:
    cov = Coverage()
    for reason, n in (("not_greedy", 3), ("n_gt_1", 1), ("not_replayable", 1)):
        for _ in range(n):
            cov.ineligible("u", "m", REASONS.index(reason))
    cov.seeded_eligible(KEY)
    counts = cov.publish()
    totals = {"sampled": 4, "replayed": 2, "failed": 1, "dropped": 1}
    block = measured(counts, {KEY: 5}, totals, {"budget": 1}, untapped=2)
    assert block["requests"] == 3 + 1 + 1 + 2 + 5 + 1 == 13
    assert block["greedy"] == {"requests": 5, "share": 5 / 13}
    assert block["ineligible"]["route_unsupported"] == {"requests": 2, "share": 2 / 13}
    assert block["not_sampled"] == 6 - 4
    assert block["pending"] == 4 - 0 - 1 - 1  # no comparison counted here yet
    assert sum(v["requests"] for v in block["ineligible"].values()) + 5 + 1 == 13
    assert counts.changes == 6  # every counted request moves it: the publisher republishes


def test_seeded_trials_never_enter_the_greedy_estimate() -> None:
    agg = Aggregator(ShadowConfig(enabled=True))
    comparer = OnlineEstimator(OnlineConfig())
    split = (Run(("a", "b"), None, None, "ab", "stop"), Run(("a", "c"), None, None, "ac", "stop"))
    seeded = RequestClass("chat", "plain", "whole", "seeded")
    for i in range(3):
        comparison = comparer.compare(Trial("h", split, TrialContext("u", "m", "")))
        agg.fold(Compared(i, KEY, comparison, (), seeded), "1")
    view = agg.publish()
    assert tuple(view.snapshots()) == () and view.by_class == () and view.exemplars == ()
    ((key, snap, stats),) = view.seeded.estimates
    assert key == KEY and (snap.trials, snap.pairs, snap.diverged) == (3, 3, 3)
    assert stats.pairs == 3 and view.accounting[("u", "m", "replayed")] == 3
    assert view.measured.compared[("u", "m", "seeded", "text_only")] == 3


async def test_every_request_is_counted_by_outcome(make_stack: Any) -> None:
    stack: Stack = await make_stack(FakeLLM())
    base = stack.proxy_url.removesuffix("/v1")
    auth = {"Authorization": "Bearer sk-client"}
    async with AsyncOpenAI(base_url=stack.proxy_url, api_key="sk-client", max_retries=0) as oai:
        for _ in range(3):
            await oai.chat.completions.create(**CHAT)
            assert await stack.tap.idle(20.0)
        await oai.chat.completions.create(**CHAT, extra_headers={"X-TBG-Replay": "never"})
        await oai.chat.completions.create(**{**CHAT, "temperature": 0.7})  # not_greedy
        await oai.chat.completions.create(model="m", messages=CHAT["messages"])  # T = 1
        await oai.chat.completions.create(**CHAT, n=2)  # n_gt_1
        await oai.chat.completions.create(**{**CHAT, "temperature": 0.7}, seed=11)  # seeded
        assert await stack.tap.idle(20.0)
    # deeper than orjson writes (about 255 levels): it parses, but could not be sent again
    nested_body = orjson.dumps(CHAT)[:-1] + b',"metadata":' + b"[" * 300 + b"]" * 300 + b"}"
    async with httpx.AsyncClient() as http:
        nested = await http.post(f"{stack.proxy_url}/chat/completions", headers=auth,
                                 content=nested_body)  # fmt: skip
        assert nested.status_code == 200  # forwarded, never replayed: not_replayable
        await http.post(f"{stack.proxy_url}/embeddings", headers=auth,
                        json={"model": "m", "input": "x"})  # fmt: skip
        assert await stack.tap.idle(20.0)
        report = (await http.get(f"{base}/tbg")).json()
        metrics = (await http.get(f"{base}/metrics")).text
    m = report["measured"]
    assert m["requests"] == 4 + 1 + 2 + 1 + 1 + 1 == 10
    assert m["greedy"] == {"requests": 4, "share": 0.4}
    assert m["seeded"] == {"requests": 1, "share": 0.1}
    assert {r: v["requests"] for r, v in m["ineligible"].items()} == {
        "not_greedy": 2, "n_gt_1": 1, "seeded_off": 0, "not_replayable": 1,
        "route_unsupported": 1,
    }  # fmt: skip
    assert (m["sampled"], m["not_sampled"], m["failed"], m["pending"]) == (5, 0, 0, 0)
    assert m["dropped"] == {"requests": 1, "by_reason": {"opted_out": 1}}
    assert m["compared"] == {"greedy": {"logprobs": 3, "text_only": 0},
                             "seeded": {"logprobs": 1, "text_only": 0}}  # fmt: skip
    assert report["eligible"] == 4  # tbg_shadow_eligible stays the greedy count
    series = {
        'tbg_shadow_ineligible_total{model_name="m",reason="not_greedy",upstream="fake"} 2.0',
        'tbg_shadow_ineligible_total{model_name="m",reason="n_gt_1",upstream="fake"} 1.0',
        'tbg_shadow_ineligible_total{model_name="m",reason="not_replayable",upstream="fake"} 1.0',
        'tbg_shadow_seeded_eligible_total{model_name="m",upstream="fake"} 1.0',
        'tbg_shadow_eligible_total{model_name="m",upstream="fake"} 4.0',
        'tbg_seeded_trials_total{model_name="m",upstream="fake"} 1.0',
    }
    assert series <= set(metrics.splitlines()), series - set(metrics.splitlines())
    text = render_text(report)
    assert text.startswith(
        "this number (T_bg) describes 40 % of your traffic (4 of 10 requests): the "
        "temperature-0 ones; measured on 3 compared (3 with logprobs, 0 text only)\n"
    ), text
    assert "  not measured  not_greedy 2, n_gt_1 1, not_replayable 1, route_unsupported 1\n" in text
    assert "  eligible: 0 not sampled, 5 sampled: 1 dropped (opted_out 1), 0 failed" in text


@pytest.mark.parametrize("refresh", [60.0, 0.05])
async def test_ineligible_requests_alone_reach_the_view_at_the_refresh(refresh: float) -> None:
    """Like the eligible count: not a change on its own (the hot path never wakes the publisher),
    but published with the next change, and at least every `eligible_refresh_s` while it moves."""
    agg = Aggregator(ShadowConfig(enabled=True), publish_interval_s=0.001,
                     eligible_refresh_s=refresh)  # fmt: skip
    await agg.start()
    try:
        version = agg.view.version
        for _ in range(10):
            agg.coverage.ineligible("u", "m", REASONS.index("not_greedy"))
        if refresh > 1:
            await asyncio.sleep(0.1)
            assert agg.view.version == version and agg.view.measured.changes == 0
            agg.sampled(KEY)  # the next change carries the counts along
        await until(lambda: agg.view.measured.ineligible.get(("u", "m", "not_greedy")) == 10)
        version = agg.view.version
        await asyncio.sleep(0.2)  # nothing moved since: nothing published
        assert agg.view.version == version
    finally:
        await agg.stop()


async def until(done: Callable[[], bool], within_s: float = 5.0) -> None:
    for _ in range(int(within_s / 0.01)):
        if done():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not reached in time")
