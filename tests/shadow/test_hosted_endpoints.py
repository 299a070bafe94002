"""What shadow replay measures behind the behaviours of hosted endpoints, and that the client's
request never suffers from them: fake upstreams (tests/shadow/hosted.py) on loopback sockets,
the real proxy, the real openai SDK as client.

| endpoint                     | what is measured (docs/shadow.md)                               |
| vLLM                         | T_bg with logprobs; seeded reproducibility                      |
| logprobs silently ignored    | text-only hazard (no T_bg), detected from the first replay      |
| logprobs refused (400), T=0 as 1e-8 | text-only hazard; primaries never augmented              |
| top_logprobs capped at 20    | T_bg with 20 logprobs; above 20 the config refuses              |
| seed ignored                 | seeded irreproducibility, never in T_bg                         |
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from openai import AsyncOpenAI

from proxy.shadow.config import ShadowConfigError, parse_shadow_config
from tests.shadow.conftest import Stack
from tests.shadow.hosted import GREEDY, HostedLLM

MESSAGES = [{"role": "user", "content": "what is the answer?"}]
ANSWER = "".join(GREEDY)


def client(stack: Stack) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=stack.proxy_url, api_key="sk-client", max_retries=0)


async def settle(stack: Stack) -> dict[str, Any]:
    assert await stack.tap.idle(20.0)
    async with httpx.AsyncClient() as http:
        return dict((await http.get(stack.proxy_url.removesuffix("/v1") + "/tbg")).json())


async def greedy_traffic(stack: Stack, n: int) -> dict[str, Any]:
    async with client(stack) as oai:
        for _ in range(n):
            out = await oai.chat.completions.create(model="m", messages=MESSAGES, temperature=0)
            assert out.choices[0].message.content == ANSWER
            report = await settle(stack)
    return report


async def plain_answer_reaches_the_client(
    stack: Stack, fake: HostedLLM, body: dict[str, Any]
) -> None:
    """The client gets exactly the bytes the upstream sends for its request: the upstream's own
    answer, or, where the proxy asked for logprobs on it, that answer as the upstream serialises
    it with `logprobs: null` (what it sends when not asked)."""
    async with httpx.AsyncClient() as http:
        proxied = await http.post(f"{stack.proxy_url}/chat/completions", json=body,
                                  headers={"Authorization": "Bearer sk-client"})  # fmt: skip
    assert proxied.status_code == 200
    primary = [c for c in fake.calls if "max_tokens" not in c][-1]
    sent = fake.last_primary_answer()
    if primary == body:
        assert proxied.content == sent
    else:  # augmented: the client's body plus the logprobs ask
        assert primary == {**body, "logprobs": True, "top_logprobs": stack.tap.config.top_logprobs}
        plain = orjson.loads(sent)
        plain["choices"][0]["logprobs"] = None
        assert proxied.content == orjson.dumps(plain)


async def test_logprobs_silently_ignored_measure_text_only(make_stack: Any) -> None:
    """Anthropic's OpenAI layer: asked for logprobs, it answers 200 without them."""
    fake = HostedLLM(logprobs="ignored")
    stack: Stack = await make_stack(fake)
    report = await greedy_traffic(stack, 4)
    await plain_answer_reaches_the_client(
        stack, fake, {"model": "m", "messages": MESSAGES, "temperature": 0}
    )
    report = await settle(stack)
    assert report["accounting"] == {"sampled": 5, "replayed": 5, "failed": 0, "dropped": 0}
    (est,) = report["estimates"]
    assert est["method"] == "hazard-only" and est["estimate"] is None  # no T_bg without logprobs
    assert est["pairs"] == 15 and est["diverged"] == 0 and est["exact_match_rate"] == 1
    measured = report["measured"]
    assert measured["compared"]["greedy"] == {"logprobs": 0, "text_only": 5}
    assert measured["greedy"] == {"requests": 5, "share": 1.0}
    # the first replay asked, learned, and no request (primary or replay) asked again
    asked = [c for c in fake.calls if c.get("logprobs")]
    assert len(asked) == 1 and "max_tokens" in asked[0]


async def test_logprobs_refused_and_zero_temperature_as_1e8(make_stack: Any) -> None:
    """Groq: a 400 to logprobs, temperature 0 decoded at 1e-8 (still greedy: below 1e-5)."""
    fake = HostedLLM(logprobs="rejected", zero_temperature_as=1e-8)
    stack: Stack = await make_stack(fake)
    report = await greedy_traffic(stack, 4)
    await plain_answer_reaches_the_client(
        stack, fake, {"model": "m", "messages": MESSAGES, "temperature": 0}
    )
    report = await settle(stack)
    assert report["accounting"] == {"sampled": 5, "replayed": 5, "failed": 0, "dropped": 0}
    (est,) = report["estimates"]
    assert est["method"] == "hazard-only" and est["pairs"] == 15 and est["diverged"] == 0
    assert report["measured"]["compared"]["greedy"] == {"logprobs": 0, "text_only": 5}
    assert set(fake.temperatures) == {1e-8}  # what the endpoint ran; the proxy sent 0 throughout
    assert all(c["temperature"] == 0 for c in fake.calls)
    refused = [c for c in fake.calls if c.get("logprobs")]
    assert len(refused) == 1  # one replay was refused, sent again without, and that was learned
    assert all(not c.get("logprobs") for c in fake.calls if "max_tokens" not in c)


async def test_top_logprobs_capped_at_20(make_stack: Any) -> None:
    """OpenAI: top_logprobs above 20 is a 400. The proxy's setting is bounded at 20, so it never
    asks for more; at 20 every trial after the first is compared with its logprobs."""
    with pytest.raises(ShadowConfigError, match=r"shadow\.top_logprobs"):
        parse_shadow_config({"top_logprobs": 21})
    fake = HostedLLM(top_logprobs_cap=20)
    stack: Stack = await make_stack(fake, {"top_logprobs": 20})
    report = await greedy_traffic(stack, 3)
    assert report["accounting"] == {"sampled": 3, "replayed": 3, "failed": 0, "dropped": 0}
    (est,) = report["estimates"]
    assert est["method"] == "likelihood" and est["diverged"] == 0
    assert report["measured"]["compared"]["greedy"] == {"logprobs": 3, "text_only": 0}
    assert {c.get("top_logprobs") for c in fake.calls if c.get("logprobs")} == {20}


async def test_a_lower_cap_than_the_setting_falls_back_to_text(make_stack: Any) -> None:
    """An upstream capped below the setting (vLLM `--max-logprobs 5`, say) refuses every ask: it
    is measured text-only, and the primaries are unharmed (docs: set top_logprobs to its cap)."""
    fake = HostedLLM(top_logprobs_cap=5)
    stack: Stack = await make_stack(fake, {"top_logprobs": 20})
    report = await greedy_traffic(stack, 3)
    assert report["accounting"] == {"sampled": 3, "replayed": 3, "failed": 0, "dropped": 0}
    assert report["measured"]["compared"]["greedy"] == {"logprobs": 0, "text_only": 3}
    assert report["estimates"][0]["method"] == "hazard-only"


async def seeded_traffic(stack: Stack, seeds: range) -> dict[str, Any]:
    async with client(stack) as oai:
        for seed in seeds:
            await oai.chat.completions.create(
                model="m", messages=MESSAGES, temperature=0.8, seed=seed
            )
            report = await settle(stack)
    return report


async def test_seed_ignored_is_seeded_irreproducibility_not_t_bg(make_stack: Any) -> None:
    fake = HostedLLM(seed="ignored")
    stack: Stack = await make_stack(fake)
    await greedy_traffic(stack, 2)
    before = (await settle(stack))["estimates"]
    report = await seeded_traffic(stack, range(4))
    await plain_answer_reaches_the_client(
        stack, fake, {"model": "m", "messages": MESSAGES, "temperature": 0.8, "seed": 4}
    )
    report = await settle(stack)
    assert report["accounting"] == {"sampled": 7, "replayed": 7, "failed": 0, "dropped": 0}
    # the greedy estimate has not moved: seeded trials never enter it
    assert report["estimates"] == [
        {**before[0], "age_seconds": report["estimates"][0]["age_seconds"]}
    ]
    (seeded,) = report["seeded"]
    assert (seeded["upstream"], seeded["model_name"]) == ("fake", "m")
    assert seeded["trials"] == 5 and seeded["pairs"] == 15
    assert seeded["diverged_trials"] == 5 and seeded["exact_match_rate"] == 0
    assert seeded["hazard_lower"] > 0  # the interval excludes a reproducible stack
    assert report["measured"]["seeded"] == {"requests": 5, "share": 5 / 7}
    assert report["measured"]["compared"]["seeded"]["logprobs"] == 5
    replays = fake.replays()[-10:]
    assert [r["seed"] for r in replays] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]  # the primary's own
    assert all(r["temperature"] == 0.8 for r in replays)


async def test_seed_honoured_is_reproducible(make_stack: Any) -> None:
    """vLLM honours per-request seeds: an ideal stack's seeded replays match exactly."""
    fake = HostedLLM(seed="honoured")
    stack: Stack = await make_stack(fake)
    report = await seeded_traffic(stack, range(5))
    assert report["estimates"] == []  # no greedy traffic: no T_bg
    (seeded,) = report["seeded"]
    # the first trial's primary came before logprobs support was known: its 2 replays, 1 pair
    assert seeded["trials"] == 5 and seeded["pairs"] == 13 and seeded["diverged"] == 0
    assert seeded["exact_match_rate"] == 1 and seeded["hazard"] == 0
    assert 0 < seeded["hazard_upper"] < 0.2  # 65 tokens without a divergence bound the hazard
    async with httpx.AsyncClient() as http:
        text = (await http.get(stack.proxy_url.removesuffix("/v1") + "/tbg?format=text")).text
        metrics = (await http.get(stack.proxy_url.removesuffix("/v1") + "/metrics")).text
    assert text.startswith("this number (T_bg) describes 0 % of your traffic (0 of 5 requests)")
    assert "fake / m seeded (temperature > 0 with a seed; not T_bg)" in text
    assert "  exact match 1 of 13 pairs; 0 of 5 trials diverged" in text
    assert 'tbg_seeded_trials_total{model_name="m",upstream="fake"} 5.0' in metrics
    assert 'tbg_seeded_exact_match_rate{model_name="m",upstream="fake"} 1.0' in metrics
    assert 'tbg_shadow_seeded_eligible_total{model_name="m",upstream="fake"} 5.0' in metrics
    greedy = [li for li in metrics.splitlines() if li.startswith("tbg_shadow_eligible_total{")]
    assert all(li.endswith(" 0.0") for li in greedy), greedy  # no greedy request was seen
