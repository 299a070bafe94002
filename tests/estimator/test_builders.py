import pytest

from estimator.builders import (
    BuildError,
    run_from_chat_response,
    run_from_chat_stream,
    run_from_completion_response,
    run_from_completion_stream,
    text_tokens,
)


def _content(tok: str, lp: float, alts: list[tuple[str, float]]) -> dict[str, object]:
    return {
        "token": tok,
        "logprob": lp,
        "bytes": [1],
        "top_logprobs": [{"token": t, "logprob": x} for t, x in alts],
    }


def test_chat_response_with_logprobs() -> None:
    body = {
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "Hi there"},
                "logprobs": {
                    "content": [
                        _content("Hi", -0.1, [("Hello", -2.5), ("Hi", -0.1)]),
                        _content(" there", -0.2, [(" there", -0.2), ("!", -1.9)]),
                    ]
                },
            }
        ]
    }
    run = run_from_chat_response(body)
    assert run.tokens == ("Hi", " there")
    assert run.logprobs == (-0.1, -0.2)
    assert run.top_logprobs is not None
    assert run.top_logprobs[0] == (("Hi", -0.1), ("Hello", -2.5))  # most likely first
    assert run.text == "Hi there" and run.finish_reason == "stop" and run.has_top_logprobs


def test_chat_stream_tolerates_usage_chunks_and_matches_response() -> None:
    chunks = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"content": "Hi"},
                    "logprobs": {"content": [_content("Hi", -0.1, [("Hi", -0.1), ("Yo", -3.0)])]},
                }
            ]
        },
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"content": "!"},
                    "finish_reason": "length",
                    "logprobs": {"content": [_content("!", -0.5, [("!", -0.5), (".", -1.0)])]},
                }
            ]
        },
        {"choices": [], "usage": {"total_tokens": 3}},
    ]
    run = run_from_chat_stream(chunks)
    assert run.tokens == ("Hi", "!") and run.text == "Hi!" and run.finish_reason == "length"
    assert run.top_logprobs is not None and run.top_logprobs[1] == (("!", -0.5), (".", -1.0))


def test_completion_response_and_stream() -> None:
    body = {
        "choices": [
            {
                "index": 0,
                "text": "a b",
                "finish_reason": "stop",
                "logprobs": {
                    "tokens": ["a", " b"],
                    "token_logprobs": [-0.3, -0.01],
                    "top_logprobs": [{"c": -1.5, "a": -0.3}, {" b": -0.01, " c": -5.0}],
                    "text_offset": [0, 1],
                },
            }
        ]
    }
    run = run_from_completion_response(body)
    assert run.tokens == ("a", " b") and run.logprobs == (-0.3, -0.01)
    assert run.top_logprobs is not None and run.top_logprobs[0] == (("a", -0.3), ("c", -1.5))
    chunks = [
        {
            "choices": [
                {
                    "index": 0,
                    "text": "a",
                    "logprobs": {
                        "tokens": ["a"],
                        "token_logprobs": [-0.3],
                        "top_logprobs": [{"a": -0.3, "c": -1.5}],
                    },
                }
            ]
        },
        {
            "choices": [
                {
                    "index": 0,
                    "text": " b",
                    "finish_reason": "stop",
                    "logprobs": {
                        "tokens": [" b"],
                        "token_logprobs": [-0.01],
                        "top_logprobs": [{" b": -0.01, " c": -5.0}],
                    },
                }
            ]
        },
        {"choices": [], "usage": {}},
    ]
    assert run_from_completion_stream(chunks) == run


def test_text_only_fallback() -> None:
    run = run_from_chat_response(
        {
            "choices": [
                {"index": 0, "message": {"content": "one  two\nthree "}, "finish_reason": "stop"}
            ]
        }
    )
    assert run.logprobs is None and run.top_logprobs is None and not run.has_top_logprobs
    assert run.tokens == ("one", "  two", "\nthree", " ")
    assert "".join(run.tokens) == run.text
    assert text_tokens("") == ()
    run = run_from_completion_response({"choices": [{"index": 0, "text": "x y", "logprobs": None}]})
    assert run.tokens == ("x", " y")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"choices": "no"},
        {"choices": [{"index": 1, "message": {"content": "x"}}]},
        {"choices": [{"index": 0, "message": {"content": 3}}]},
        {
            "choices": [
                {
                    "index": 0,
                    "message": {"content": "x"},
                    "logprobs": {"content": [{"token": 1, "logprob": -1}]},
                }
            ]
        },
        {
            "choices": [
                {
                    "index": 0,
                    "message": {"content": "x"},
                    "logprobs": {"content": [{"token": "x", "logprob": "bad"}]},
                }
            ]
        },
        [],
    ],
)
def test_malformed_chat_bodies_raise_build_error(body: object) -> None:
    with pytest.raises(BuildError):
        run_from_chat_response(body)  # type: ignore[arg-type]


def test_malformed_completion_raises() -> None:
    with pytest.raises(BuildError):
        run_from_completion_response(
            {
                "choices": [
                    {
                        "index": 0,
                        "text": "x",
                        "logprobs": {
                            "tokens": ["x"],
                            "token_logprobs": [-1.0, -2.0],
                            "top_logprobs": [None],
                        },
                    }
                ]
            }
        )
    with pytest.raises(BuildError):
        run_from_completion_stream([{"choices": None}])
