"""The openai SDK against the reference server directly: chat, completions, streaming, errors."""

from __future__ import annotations

import math
from collections.abc import Iterator

import httpx
import openai
import pytest

from reference.launch import ReferenceProcess

pytestmark = pytest.mark.reference

MSG = [{"role": "user", "content": "Name a fruit."}]


@pytest.fixture(scope="module")
def api(serial_server: ReferenceProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=serial_server.base_url, api_key="unused", max_retries=0) as c:
        yield c


def test_models_and_health(api: openai.OpenAI, serial_server: ReferenceProcess) -> None:
    assert [m.id for m in api.models.list()] == ["smollm2"]
    root = serial_server.base_url.removesuffix("/v1")
    assert httpx.get(f"{root}/health").status_code == 200


def test_chat_with_logprobs(api: openai.OpenAI) -> None:
    resp = api.chat.completions.create(
        model="smollm2", messages=MSG, max_tokens=12, temperature=0, logprobs=True, top_logprobs=3
    )
    choice = resp.choices[0]
    assert choice.finish_reason in {"stop", "length"}
    assert resp.usage is not None and resp.usage.completion_tokens == len(choice.logprobs.content)
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    text = "".join(c.token for c in choice.logprobs.content if not c.token.startswith("<|"))
    assert choice.message.content == text
    for item in choice.logprobs.content:
        assert len(item.top_logprobs) == 3
        assert bytes(item.bytes or []).decode("utf-8", "replace") == item.token
        # greedy: the chosen token is (one of) the most likely, and logprobs are a distribution
        assert item.logprob == pytest.approx(item.top_logprobs[0].logprob)
        assert sum(math.exp(t.logprob) for t in item.top_logprobs) <= 1.0 + 1e-6


def test_logprobs_null_when_not_requested(serial_server: ReferenceProcess) -> None:
    body = {"model": "smollm2", "messages": MSG, "max_tokens": 2, "temperature": 0}
    raw = httpx.post(f"{serial_server.base_url}/chat/completions", json=body, timeout=60).json()
    assert raw["choices"][0]["logprobs"] is None
    body = {"model": "smollm2", "prompt": "Hello", "max_tokens": 2, "temperature": 0}
    raw = httpx.post(f"{serial_server.base_url}/completions", json=body, timeout=60).json()
    assert raw["choices"][0]["logprobs"] is None


def test_completions_logprobs_and_length(api: openai.OpenAI) -> None:
    resp = api.completions.create(
        model="smollm2", prompt="The capital of France is", max_tokens=5, temperature=0, logprobs=2
    )
    choice = resp.choices[0]
    lp = choice.logprobs
    assert choice.finish_reason == "length" and resp.usage is not None
    assert resp.usage.completion_tokens == 5 == len(lp.tokens) == len(lp.token_logprobs)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(5)]
    assert "".join(lp.tokens) == choice.text
    assert all(tok in top for tok, top in zip(lp.tokens, lp.top_logprobs, strict=True))


def test_streaming_chat_carries_logprobs_and_usage(api: openai.OpenAI) -> None:
    full = api.chat.completions.create(
        model="smollm2", messages=MSG, max_tokens=10, temperature=0, logprobs=True
    )
    stream = api.chat.completions.create(
        model="smollm2",
        messages=MSG,
        max_tokens=10,
        temperature=0,
        logprobs=True,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens  # type: ignore[union-attr]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    streamed = [
        t
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content
    ]
    assert text == full.choices[0].message.content
    assert [(t.token, t.logprob) for t in streamed] == [
        (t.token, t.logprob)
        for t in full.choices[0].logprobs.content  # type: ignore[union-attr]
    ]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == full.choices[0].finish_reason and not any(finishes[:-1])


def test_streaming_completions_and_stop(api: openai.OpenAI) -> None:
    full = api.completions.create(
        model="smollm2", prompt="1, 2, 3, 4,", max_tokens=12, temperature=0
    )
    assert full.choices[0].text.startswith(" 5, 6")
    stopped = api.completions.create(
        model="smollm2",
        prompt="1, 2, 3, 4,",
        max_tokens=12,
        temperature=0,
        stop=[" 6"],
        stream=True,
    )
    pieces = list(stopped)
    text = "".join(c.choices[0].text for c in pieces if c.choices)
    assert text == " 5,"
    assert pieces[-1].choices[0].finish_reason == "stop"


def test_seeded_sampling_is_reproducible(api: openai.OpenAI) -> None:
    def draw(seed: int) -> str:
        r = api.chat.completions.create(
            model="smollm2", messages=MSG, max_tokens=8, temperature=1.0, top_p=0.9, seed=seed
        )
        return r.choices[0].message.content or ""

    assert draw(7) == draw(7)
    assert len({draw(seed) for seed in (1, 2, 3, 4)}) > 1  # the seed is used: sampling, not greedy


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "smollm2"}, 400, "messages"),
        ({"model": "nope", "messages": MSG}, 404, "model"),
        (
            {"model": "smollm2", "messages": MSG, "logprobs": True, "top_logprobs": 21},
            400,
            "top_logprobs",
        ),
        ({"model": "smollm2", "messages": MSG, "n": 2}, 400, "n"),
        ({"model": "smollm2", "messages": MSG, "temperature": -1}, 400, "temperature"),
        ({"model": "smollm2", "messages": MSG, "max_tokens": 0}, 400, "max_tokens"),
    ],
)
def test_bad_requests_are_openai_errors(
    api: openai.OpenAI, body: dict[str, object], status: int, param: str
) -> None:
    with pytest.raises(openai.APIStatusError) as err:
        api.post("/chat/completions", body=body, cast_to=httpx.Response)
    assert err.value.status_code == status
    error = err.value.body
    assert isinstance(error, dict) and error["param"] == param and error["code"] == status
    assert isinstance(error["message"], str) and error["type"]


def test_bad_json_and_missing_prompt(serial_server: ReferenceProcess) -> None:
    url = serial_server.base_url
    r = httpx.post(f"{url}/chat/completions", content=b"{not json", timeout=30)
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = httpx.post(f"{url}/completions", json={"model": "smollm2"}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = httpx.get(f"{url}/nothing-here", timeout=30)
    assert r.status_code == 404 and "error" in r.json()


def test_metrics_are_vllm_style(serial_server: ReferenceProcess, api: openai.OpenAI) -> None:
    api.completions.create(model="smollm2", prompt="Hi", max_tokens=2, temperature=0)
    text = httpx.get(serial_server.base_url.removesuffix("/v1") + "/metrics").text
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
    ):
        assert f'{name}{{model_name="smollm2"}}' in text
    gen = next(ln for ln in text.splitlines() if ln.startswith("vllm:generation_tokens_total"))
    assert float(gen.split()[-1]) >= 2
