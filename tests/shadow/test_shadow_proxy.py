"""The shadow path inside the real proxy, over loopback sockets, with the real openai SDK as client.
The upstream is a controllable fake (fault injection); the reference LLM runs in test_e2e_*."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest
from openai import AsyncOpenAI

from proxy.config import ConfigError
from tests.shadow.conftest import TOKENS, FakeLLM, Stack

CHAT = {"model": "m", "messages": [{"role": "user", "content": "secret prompt 42"}],
        "temperature": 0}  # fmt: skip


def client(stack: Stack, key: str = "sk-client") -> AsyncOpenAI:
    return AsyncOpenAI(base_url=stack.proxy_url, api_key=key, max_retries=0)


async def settle(stack: Stack) -> dict[str, Any]:
    assert await stack.tap.idle(20.0)
    async with httpx.AsyncClient() as http:
        return dict((await http.get(stack.proxy_url.removesuffix("/v1") + "/tbg")).json())


async def test_replays_are_compared_and_exported(make_stack: Any) -> None:
    # trial 1: primary A, replay A, replay B (flipped); trials 2 and 3 agree everywhere
    stack: Stack = await make_stack(FakeLLM(flip_replays={1}))
    async with client(stack) as oai:
        for _ in range(3):
            out = await oai.chat.completions.create(**CHAT)
            assert out.choices[0].message.content == "Hello, world A!"
            report = await settle(stack)
    assert report["accounting"] == {"sampled": 3, "replayed": 3, "failed": 0, "dropped": 0}
    (est,) = report["estimates"]
    assert (est["upstream"], est["model_name"]) == ("fake", "m")
    # Trial 1's primary came before logprobs support was known: text-only, so only its two
    # replays are compared (1 pair, diverged). Trials 2 and 3 are augmented: 3 runs, 3 pairs each.
    assert est["pairs"] == 7 and est["diverged"] == 1
    assert est["method"] == "likelihood"
    # The flip sits on a tie (the runs' mean logprobs are equal): T̂ = 0 is the MLE. Six scored
    # pairs of 5 tokens say little: with the small-count correction (the rule of three when nothing
    # scored diverged) the upper bound may reach the grid's top, 1.
    assert est["lower"] == est["estimate"] == 0 < est["upper"] <= 1
    exemplar = report["exemplars"][0]
    assert exemplar["position"] == 3
    # record_text is off: no completion text, not even the two diverging tokens.
    assert "token_a" not in exemplar and "token_b" not in exemplar
    assert len(exemplar["request_hash"]) == 16 and "text" not in exemplar
    replays = [c for c in stack.fake.calls if "max_tokens" in c]
    assert len(replays) == 6
    assert all(r["stream"] is False and r["max_tokens"] == 5 and r["top_logprobs"] == 5
               for r in replays)  # fmt: skip
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(stack.proxy_url.removesuffix("/v1") + "/metrics")).text
    assert 'tbg_pairs_diverged_total{load_bucket="1",model_name="m",upstream="fake"} 1.0' in metrics
    assert metrics.count('tbg_nll_total{grid_t="') == 64  # the fine grid once per model
    assert metrics.count('tbg_nll_by_load_total{grid_t="') == 22 * 7  # every bucket, primed at 0
    # The series budget (docs/monitoring.md): at most 400 series per (replica, upstream, model).
    per_model = [
        line
        for line in metrics.splitlines()
        if line.startswith("tbg_") and 'model_name="m"' in line and 'upstream="fake"' in line
    ]
    assert len(per_model) <= 400, len(per_model)
    assert 'tbg_shadow_sampled_total{model_name="m",upstream="fake"} 3.0' in metrics
    assert 'tbg_temperature{method="likelihood",model_name="m",upstream="fake"}' in metrics
    # nothing of the prompt leaves the process through /tbg or /metrics
    assert "secret" not in metrics and "secret" not in orjson.dumps(report).decode()


async def test_record_text_puts_the_input_in_exemplars(make_stack: Any) -> None:
    stack: Stack = await make_stack(FakeLLM(flip_replays={0}), {"record_text": True, "replays": 1})
    async with client(stack) as oai:
        await oai.chat.completions.create(**CHAT)
    report = await settle(stack)
    text = report["exemplars"][0]["text"]
    assert text["input"][0]["content"] == "secret prompt 42"
    assert {text["run_a"], text["run_b"]} == {"Hello, world A!", "Hello, world B!"}
    exemplar = report["exemplars"][0]
    assert exemplar["token_a"] != exemplar["token_b"]  # shown with record_text


async def test_accounting_is_exact_with_drops_and_failures(make_stack: Any) -> None:
    fake = FakeLLM(fail_replays=lambda i: i % 2 == 0, replay_delay=0.05)
    stack: Stack = await make_stack(fake, {"queue_size": 2, "max_concurrent": 1, "replays": 1})
    async with client(stack) as oai:
        await asyncio.gather(*(oai.chat.completions.create(**CHAT) for _ in range(12)))
    report = await settle(stack)
    acc = report["accounting"]
    assert acc["sampled"] == 12
    assert acc["sampled"] == acc["replayed"] + acc["dropped"] + acc["failed"]
    assert acc["dropped"] > 0, acc  # a queue of 2 behind one slow worker overflows
    assert acc["replayed"] + acc["failed"] > 0, acc
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(stack.proxy_url.removesuffix("/v1") + "/metrics")).text
    assert (
        f'tbg_shadow_sampled_total{{model_name="m",upstream="fake"}} {acc["sampled"]}.0' in metrics
    )
    dropped = sum(
        float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
        if line.startswith("tbg_shadow_dropped_total{")
    )  # fmt: skip
    assert dropped == acc["dropped"]


async def test_failed_replays_count_as_failed(make_stack: Any) -> None:
    stack: Stack = await make_stack(FakeLLM(fail_replays=lambda _i: True), {"replays": 2})
    async with client(stack) as oai:
        await oai.chat.completions.create(**CHAT)
    report = await settle(stack)
    assert report["accounting"] == {"sampled": 1, "replayed": 0, "failed": 1, "dropped": 0}
    assert report["estimates"] == []


async def test_non_greedy_and_multi_choice_requests_are_not_sampled(make_stack: Any) -> None:
    stack: Stack = await make_stack()
    async with client(stack) as oai:
        await oai.chat.completions.create(**{**CHAT, "temperature": 0.7})
        await oai.chat.completions.create(model="m", messages=CHAT["messages"])  # default T = 1
        await oai.chat.completions.create(**CHAT, n=2)
    report = await settle(stack)
    assert report["accounting"]["sampled"] == 0
    assert len(stack.fake.calls) == 3


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("route", ["chat", "completions"])
async def test_augmented_primary_is_byte_identical_to_a_direct_call(
    make_stack: Any, route: str, stream: bool
) -> None:
    stack: Stack = await make_stack(shadow={"replays": 1})
    path = "/chat/completions" if route == "chat" else "/completions"
    body: dict[str, Any] = (
        dict(CHAT) if route == "chat" else {"model": "m", "prompt": "secret", "temperature": 0}
    )
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    async with httpx.AsyncClient() as http:
        # The first trial's replay proves the upstream returns logprobs; augmentation starts then.
        await http.post(stack.proxy_url + path, json=body)
        await settle(stack)
        via_proxy = (await http.post(stack.proxy_url + path, json=body)).content
        direct = (await http.post(stack.upstream_url + path, json=body)).content
    upstream_saw = stack.fake.calls[2]
    assert upstream_saw["logprobs"] in (True, 5)  # augmented on the way up ...
    assert b'"logprobs":null' in direct
    assert via_proxy == direct  # ... and stripped on the way down, byte for byte
    report = await settle(stack)
    assert report["accounting"]["replayed"] == 2
    assert report["estimates"][0]["jitter_sigma"] is not None  # the primary's logprobs were used


async def test_client_logprobs_pass_through_untouched(make_stack: Any) -> None:
    stack: Stack = await make_stack(shadow={"replays": 1})
    body = {**CHAT, "logprobs": True, "top_logprobs": 2}
    async with httpx.AsyncClient() as http:
        await http.post(stack.proxy_url + "/chat/completions", json=body)
        via_proxy = (await http.post(stack.proxy_url + "/chat/completions", json=body)).content
        direct = (await http.post(stack.upstream_url + "/chat/completions", json=body)).content
    assert via_proxy == direct
    assert orjson.loads(via_proxy)["choices"][0]["logprobs"]["content"][3]["top_logprobs"]


@pytest.mark.parametrize(
    ("upstream", "expected"),
    [({"auth": "inject", "api_key_env": "FAKE_KEY"}, "Bearer sk-up"), ({}, "Bearer sk-client")],
)
async def test_replay_auth_follows_the_upstream_setting(
    make_stack: Any, upstream: dict[str, Any], expected: str
) -> None:
    stack: Stack = await make_stack(shadow={"replays": 1}, upstream=upstream)
    async with client(stack) as oai:
        await oai.chat.completions.create(**CHAT)
    await settle(stack)
    assert [h.get("Authorization") for h in stack.fake.headers] == [expected, expected]


async def test_upstream_errors_on_the_primary_are_dropped_not_replayed(make_stack: Any) -> None:
    stack: Stack = await make_stack()
    async with httpx.AsyncClient() as http:
        bad = await http.post(stack.proxy_url + "/chat/completions", json={**CHAT, "model": "m",
                              "messages": "not-a-list"})  # fmt: skip
    assert bad.status_code == 400  # the upstream's error, relayed as is
    report = await settle(stack)
    assert report["accounting"] == {"sampled": 1, "replayed": 0, "failed": 0, "dropped": 1}


async def test_counter_series_exist_at_zero_before_any_traffic(make_stack: Any) -> None:
    stack: Stack = await make_stack()
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(stack.proxy_url.removesuffix("/v1") + "/metrics")).text
    assert 'tbg_shadow_sampled_total{model_name="m",upstream="fake"} 0.0' in metrics
    assert (
        'tbg_shadow_dropped_total{model_name="m",reason="queue_full",upstream="fake"} 0.0'
        in metrics
    )
    for bucket in ("1", "2", "4", "8", "16", "32", "64+"):
        assert (
            f'tbg_pairs_compared_total{{load_bucket="{bucket}",model_name="m",upstream="fake"}} 0.0'
            in metrics
        )
    assert "tbg_temperature{" not in metrics  # no estimate is invented before a comparison


async def test_one_exemplar_per_distinct_split(make_stack: Any) -> None:
    stack: Stack = await make_stack(FakeLLM(flip_replays={3}), {"replays": 2})
    async with client(stack) as oai:
        await oai.chat.completions.create(**CHAT)  # warm-up: replays 0 and 1 agree
        await settle(stack)
        await oai.chat.completions.create(**CHAT)  # primary A, replay 2 A, replay 3 B
    report = await settle(stack)
    est = report["estimates"][0]
    assert est["diverged"] == 2  # (primary, replay 3) and (replay 2, replay 3) ...
    assert len(report["exemplars"]) == 1  # ... are one fork
    assert report["dropped_by_reason"] == {}


async def test_upstream_without_logprobs_is_detected_and_never_fails_a_client(
    make_stack: Any,
) -> None:
    stack: Stack = await make_stack(FakeLLM(reject_logprobs=True), {"replays": 2})
    async with client(stack) as oai:
        for _ in range(3):
            out = await oai.chat.completions.create(**CHAT)
            assert out.choices[0].message.content == "Hello, world A!"
            await settle(stack)
    report = await settle(stack)
    assert report["accounting"] == {"sampled": 3, "replayed": 3, "failed": 0, "dropped": 0}
    asked = [c for c in stack.fake.calls if c.get("logprobs")]
    assert len(asked) == 1  # only the first replay asked; the 400 switched logprobs off
    assert all(not c.get("logprobs") for c in stack.fake.calls if "max_tokens" not in c)
    est = report["estimates"][0]
    assert est["method"] == "hazard-only" and est["pairs"] == 9


async def test_text_only_streams_without_usage_replay_the_whole_answer(make_stack: Any) -> None:
    """Behind an upstream without logprobs, a stream sent without `include_usage` does not say how
    many tokens it had, and its chunks carry several tokens each: replays must not be capped at
    the number of chunks (every replay would be cut short and count as a divergence)."""
    fake = FakeLLM(reject_logprobs=True, tokens_per_chunk=2)
    stack: Stack = await make_stack(fake, {"replays": 2})
    async with client(stack) as oai:
        for _ in range(3):
            stream = await oai.chat.completions.create(**CHAT, stream=True)
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            assert text == "Hello, world A!"
            await settle(stack)
    report = await settle(stack)
    assert report["accounting"] == {"sampled": 3, "replayed": 3, "failed": 0, "dropped": 0}
    replays = [c for c in stack.fake.calls if "max_tokens" in c]
    assert replays and all(c["max_tokens"] >= len(TOKENS) for c in replays)
    est = report["estimates"][0]
    assert est["pairs"] == 9 and est["diverged"] == 0, est


@pytest.mark.parametrize(("setting", "augmented"), [("yes", True), ("no", False)])
async def test_configured_logprobs_support(make_stack: Any, setting: str, augmented: bool) -> None:
    stack: Stack = await make_stack(shadow={"replays": 1, "logprobs": setting})
    async with client(stack) as oai:
        await oai.chat.completions.create(**CHAT)
    await settle(stack)
    primary, replay = stack.fake.calls
    assert (primary.get("logprobs") is True) is augmented  # no detection round needed with "yes"
    assert (replay.get("logprobs") is True) is augmented


async def test_load_from_vllm_metrics(make_stack: Any) -> None:
    stack: Stack = await make_stack(
        FakeLLM(running=37),
        {"replays": 1, "load_source": "vllm_metrics", "load_poll_seconds": 0.05},
    )
    await asyncio.sleep(0.3)  # a few polls
    async with client(stack) as oai:
        await oai.chat.completions.create(**CHAT)
    report = await settle(stack)
    assert list(report["estimates"][0]["by_load"]) == ["64+"]  # 37 running upstream, not 1 here


async def test_dedicated_replay_key(make_stack: Any) -> None:
    stack: Stack = await make_stack(
        shadow={"replays": 1, "replay_key_env": {"fake": "TBG_TEST_REPLAY_KEY"}},
        env={"TBG_TEST_REPLAY_KEY": "sk-replays"},  # read from the injected environment
    )
    async with client(stack) as oai:
        await oai.chat.completions.create(**CHAT)
    await settle(stack)
    assert [h.get("Authorization") for h in stack.fake.headers] == [
        "Bearer sk-client",  # the primary: the client's own (passthrough)
        "Bearer sk-replays",  # the replay: billed to the dedicated key
    ]


@pytest.mark.parametrize(
    ("key_env", "message"),
    [
        ({"fake": "TBG_TEST_UNSET_KEY"}, "shadow.replay_key_env.fake: environment variable"),
        ({"nope": "HOME"}, "shadow.replay_key_env.nope: no upstream named"),
    ],
)
async def test_bad_replay_key_stops_the_start(
    make_stack: Any, key_env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        await make_stack(shadow={"replay_key_env": key_env})


TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "look a word up",
                                           "parameters": {"type": "object", "properties": {}}}}]  # fmt: skip
SCHEMA = {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}}}
# (route, kind, streaming) → requests sent, and which of them diverge (one replay flipped)
CLASS_PLAN: list[tuple[tuple[str, str, str], int, set[int]]] = [
    (("chat", "plain", "whole"), 2, {1}),
    (("chat", "plain", "stream"), 1, set()),
    (("chat", "tools", "whole"), 1, {0}),
    (("chat", "tools", "stream"), 2, set()),
    (("chat", "json", "whole"), 3, {0, 2}),
    (("chat", "json", "stream"), 1, {0}),
    (("completions", "plain", "whole"), 1, set()),
]


async def test_estimates_by_request_class(make_stack: Any) -> None:
    """Plain, tools and json_schema chat requests, streamed and not, and a completion: each trial
    (3 runs, augmented from the first with `logprobs: yes`: 3 pairs) lands in its own class; a trial
    with one replay flipped has 2 of its 3 pairs diverged."""
    trial = 0
    flips: set[int] = set()
    for _, n, diverging in CLASS_PLAN:
        flips |= {2 * (trial + i) + 1 for i in diverging}  # replays 2j and 2j+1 belong to trial j
        trial += n
    stack: Stack = await make_stack(FakeLLM(flip_replays=flips), {"logprobs": "yes"})
    async with client(stack) as oai:
        for (route, kind, streaming), n, _ in CLASS_PLAN:
            extra: dict[str, Any] = {"tools": TOOLS} if kind == "tools" else (
                {"response_format": SCHEMA} if kind == "json" else {})  # fmt: skip
            for _ in range(n):
                stream = streaming == "stream"
                if route == "completions":
                    out = await oai.completions.create(model="m", prompt="secret", temperature=0)
                    assert out.choices[0].text == "Hello, world A!"
                elif stream:
                    chunks = await oai.chat.completions.create(**CHAT, **extra, stream=True)
                    text = "".join(
                        [c.choices[0].delta.content or "" async for c in chunks if c.choices]
                    )
                    assert text == "Hello, world A!"
                else:
                    out = await oai.chat.completions.create(**CHAT, **extra)
                    assert out.choices[0].message.content == "Hello, world A!"
                await settle(stack)  # one trial at a time: the replays' order is the trials'
    report = await settle(stack)
    assert report["accounting"] == {"sampled": 11, "replayed": 11, "failed": 0, "dropped": 0}
    primaries = [c for c in stack.fake.calls if "max_tokens" not in c]
    assert [bool(c.get("tools")) for c in primaries].count(True) == 3  # sent on as the client's
    (est,) = report["estimates"]
    got = {(c["route"], c["kind"], c["streaming"]): c for c in est["by_class"]}
    assert [(c["route"], c["kind"], c["streaming"]) for c in est["by_class"]] == [
        cls for cls, _, _ in CLASS_PLAN
    ]  # in the classes' order
    for cls, n, diverging in CLASS_PLAN:
        entry = got[cls]
        assert (entry["trials"], entry["pairs"], entry["diverged"]) == (
            n, 3 * n, 2 * len(diverging)), cls  # fmt: skip
        assert entry["method"] == "likelihood" and entry["estimate"] is not None, entry
        assert entry["lower"] <= entry["estimate"] <= entry["upper"], entry
        assert set(entry) == {"route", "kind", "streaming", "decoding", "prompt", "estimate",
                              "lower", "upper", "trials", "pairs", "diverged", "method"}  # fmt: skip
        assert (entry["decoding"], entry["prompt"]) == ("greedy", "short")  # 4 prompt tokens
    assert sum(c["pairs"] for c in est["by_class"]) == est["pairs"] == 33
    assert sum(c["diverged"] for c in est["by_class"]) == est["diverged"] == 10
    async with httpx.AsyncClient() as http:
        text = (await http.get(stack.proxy_url.removesuffix("/v1") + "/tbg?format=text")).text
    assert "\n  class chat/tools/stream        T_bg " in text, text
    assert text.count("  class ") == len(CLASS_PLAN)
    line = next(li for li in text.splitlines() if "class chat/json/whole " in li)
    assert line.endswith(", 4/9 diverged"), line
