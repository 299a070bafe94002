"""Byte-exact logprob stripping, greedy eligibility and the replay body."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from proxy.shadow.config import Eligibility
from proxy.shadow.wire import (
    augmented_upstream_body,
    client_wants_logprobs,
    is_greedy,
    replay_body,
    strip_logprobs,
)

TRICKY = [
    "logprobs",
    '"logprobs":',
    '{"logprobs": [1]}',
    "\\",
    'a\\"b',
    "}]",
    "é→🙂",
    ',"logprobs":',
]


def _chat(rng: random.Random, with_logprobs: bool) -> dict[str, Any]:
    tokens = [rng.choice([*TRICKY, "the", " cat", "\n"]) for _ in range(rng.randint(0, 6))]
    content = "".join(tokens)
    logprobs = None
    if with_logprobs:
        logprobs = {
            "content": [
                {
                    "token": t,
                    "logprob": -rng.random(),
                    "bytes": list(t.encode()),
                    "top_logprobs": [
                        {"token": u, "logprob": -rng.random() * 5, "bytes": None}
                        for u in rng.sample(TRICKY, 3)
                    ],
                }
                for t in tokens
            ]
        }
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "logprobs": logprobs,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 3,
            "completion_tokens": len(tokens),
            "total_tokens": 3 + len(tokens),
        },
    }


def _completion(rng: random.Random, with_logprobs: bool) -> dict[str, Any]:
    tokens = [rng.choice(TRICKY) for _ in range(rng.randint(1, 5))]
    logprobs = None
    if with_logprobs:
        logprobs = {
            "tokens": tokens,
            "token_logprobs": [-0.5] * len(tokens),
            "top_logprobs": [{t: -0.5, "logprobs": -1.0} for t in tokens],
            "text_offset": list(range(len(tokens))),
        }
    return {
        "id": "cmpl-1",
        "choices": [
            {"text": "".join(tokens), "index": 0, "logprobs": logprobs, "finish_reason": "length"}
        ],
    }


@pytest.mark.parametrize("make", [_chat, _completion])
@pytest.mark.parametrize("indent", [False, True])
def test_strip_gives_the_bytes_of_a_response_without_logprobs(make: Any, indent: bool) -> None:
    rng = random.Random(7)
    option = orjson.OPT_INDENT_2 if indent else 0
    for _ in range(300):
        seed = rng.random()
        with_lp = orjson.dumps(make(random.Random(seed), True), option=option)
        without = orjson.dumps(make(random.Random(seed), False), option=option)
        assert strip_logprobs(with_lp) == without


def test_strip_handles_sse_events_and_leaves_other_bytes_alone() -> None:
    head = b'data: {"choices":[{"index":0,"delta":{"content":"}"},"logprobs": '
    value = b'{"content":[{"token":"}","logprob":-1.0e-3,"top_logprobs":[]}]}'
    tail = b' ,"finish_reason":null}]}\n\n'
    assert strip_logprobs(head + value + tail) == head + b"null" + tail
    untouched = b'data: {"choices":[],"usage":{"prompt_tokens":1}}\n\n'
    assert strip_logprobs(untouched) is untouched
    assert strip_logprobs(b"data: [DONE]\n\n") == b"data: [DONE]\n\n"


def test_strip_rejects_truncated_json() -> None:
    with pytest.raises(ValueError, match="unterminated"):
        strip_logprobs(b'{"choices":[{"logprobs":{"content":[')


@pytest.mark.parametrize(
    ("route", "body", "expected"),
    [
        ("chat", {"temperature": 0}, True),
        ("chat", {"temperature": 0.0, "n": 1}, True),
        ("chat", {"temperature": 0, "n": 2}, False),
        ("chat", {"temperature": 0.7}, False),
        ("chat", {}, False),  # OpenAI's default temperature is 1
        ("chat", {"temperature": 1, "top_k": 1}, True),
        ("chat", {"temperature": False}, False),
        ("completions", {"temperature": 0, "best_of": 3}, False),
        ("completions", {"temperature": 0, "tools": [{"type": "function"}]}, True),
        ("embeddings", {"temperature": 0}, False),
    ],
)
def test_greedy_eligibility(route: str, body: dict[str, Any], expected: bool) -> None:
    assert is_greedy(route, body, Eligibility()) is expected


def test_eligibility_switches() -> None:
    assert is_greedy("chat", {}, Eligibility(missing_temperature_is_greedy=True))
    assert not is_greedy("chat", {"temperature": 1, "top_k": 1}, Eligibility(allow_top_k_1=False))


def test_client_wants_logprobs() -> None:
    assert client_wants_logprobs("chat", {"logprobs": True})
    assert not client_wants_logprobs("chat", {"logprobs": False})
    assert client_wants_logprobs("completions", {"logprobs": 0})
    assert not client_wants_logprobs("completions", {})


def test_augment_and_replay_bodies() -> None:
    chat = {
        "model": "m",
        "messages": [],
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 100,
    }
    assert orjson.loads(augmented_upstream_body("chat", chat, 5)) == {
        **chat,
        "logprobs": True,
        "top_logprobs": 5,
    }
    replay = orjson.loads(replay_body("chat", chat, max_tokens=12, logprobs_k=5))
    assert replay["stream"] is False and "stream_options" not in replay
    assert replay["max_tokens"] == 12 and replay["top_logprobs"] == 5
    modern = orjson.loads(
        replay_body("chat", {"max_completion_tokens": 50}, max_tokens=7, logprobs_k=None)
    )
    assert modern == {"max_completion_tokens": 7, "stream": False}
    comp = orjson.loads(replay_body("completions", {"prompt": "x"}, max_tokens=3, logprobs_k=4))
    assert comp == {"prompt": "x", "logprobs": 4, "stream": False, "max_tokens": 3}
    assert "stream" in chat  # the client's body is never mutated


def test_strip_finds_the_end_of_deep_and_tricky_values() -> None:
    # Brackets and escaped quotes inside strings, and nesting deeper than the one-regex path
    # reaches (the scanner takes over there): the value always ends where JSON says it does.
    tricky = b'{"content":[{"token":"]}\\"{[","bytes":[93,125],"top_logprobs":[]}]}'
    deep = b"[" * 30 + b'"x"' + b"]" * 30
    for value in (tricky, deep, b'"a \\" string"', b"-1.5e-3", b"[]", b"{}"):
        body = b'{"choices":[{"index":0,"logprobs":' + value + b',"finish_reason":"stop"}]}'
        assert orjson.loads(body)  # valid JSON
        stripped = strip_logprobs(body)
        assert stripped == b'{"choices":[{"index":0,"logprobs":null,"finish_reason":"stop"}]}'
    with pytest.raises(ValueError, match="unterminated"):
        strip_logprobs(b'{"choices":[{"logprobs":' + deep[:-1])
