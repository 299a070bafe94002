"""The incremental SSE parser: random split points (fixed seed), CRLF, multi-byte characters."""

from __future__ import annotations

import random

import orjson
import pytest

from proxy.sse import SSEParser, SSESplitter, TokenLogprob, parse_event, tokens_from_event

from .fakes import CHAT_EVENTS


def _stream(sep: bytes) -> tuple[bytes, list[bytes]]:
    events = [e.replace(b"\n\n", sep) for e in CHAT_EVENTS]
    return b"".join(events), events


@pytest.mark.parametrize("sep", [b"\n\n", b"\r\n\r\n"])
def test_random_splits_give_back_the_same_events(sep: bytes) -> None:
    data, expected = _stream(sep)
    rng = random.Random(1234)
    for _ in range(300):
        cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 40)))
        splitter = SSESplitter()
        got: list[bytes] = []
        for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True):
            got += splitter.feed(data[a:b])
        assert got == expected
        assert splitter.flush() == b""


def test_byte_by_byte_keeps_multibyte_characters() -> None:
    data, _ = _stream(b"\n\n")
    parser = SSEParser()
    payloads = []
    for i in range(len(data)):
        payloads += parser.feed(data[i : i + 1])
    payloads += parser.close()
    assert [p["choices"][0]["delta"].get("content") for p in payloads[1:3]] == ["Hé", "llo ☃"]
    assert len(payloads) == 5  # [DONE] excluded, usage chunk kept
    assert payloads[-1]["usage"]["total_tokens"] == 5


def test_unterminated_last_event_is_flushed() -> None:
    parser = SSEParser()
    assert parser.feed(b'data: {"a": 1}\n\ndata: {"b": 2}') == [{"a": 1}]
    assert parser.close() == [{"b": 2}]


def test_multiline_data_comments_and_event_names() -> None:
    event = parse_event(b': keep-alive\nevent: delta\ndata: {"a":\ndata: 1}\n\n')
    assert event.event == "delta"
    assert orjson.loads(event.data or "") == {"a": 1}
    assert parse_event(b"data: [DONE]\n\n").done


def test_tokens_and_logprobs_from_chat_and_completion_events() -> None:
    chat = {
        "choices": [
            {
                "index": 0,
                "delta": {"content": "ab"},
                "logprobs": {
                    "content": [{"token": "a", "logprob": -0.5}, {"token": "b", "logprob": -1}]
                },
            }
        ]
    }
    assert list(tokens_from_event(chat)) == [
        TokenLogprob(0, "a", -0.5),
        TokenLogprob(0, "b", -1.0),
    ]
    completion = {
        "choices": [
            {
                "index": 1,
                "text": "xy",
                "logprobs": {"tokens": ["x", "y"], "token_logprobs": [-0.1, None]},
            }
        ]
    }
    assert list(tokens_from_event(completion)) == [
        TokenLogprob(1, "x", -0.1),
        TokenLogprob(1, "y", None),
    ]
    plain = {"choices": [{"index": 0, "delta": {"content": "hi"}, "logprobs": None}]}
    assert list(tokens_from_event(plain)) == [TokenLogprob(0, "hi", None)]
    assert list(tokens_from_event({"choices": [], "usage": {}})) == []


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\u0085"])
def test_unicode_line_separators_inside_json_do_not_split_the_event(char: str) -> None:
    # orjson (and vLLM) write U+2028/U+2029/U+0085 unescaped inside JSON strings; only CRLF, CR and
    # LF end an SSE line, so the event must survive whole and the content come back unchanged.
    content = f"a{char}b"
    chunk = {"choices": [{"index": 0, "delta": {"content": content}}]}
    raw = b"data: " + orjson.dumps(chunk) + b"\n\n"
    assert char.encode() in raw  # really unescaped on the wire
    parser = SSEParser()
    payloads = parser.feed(raw) + parser.close()
    assert payloads == [chunk]
    assert parse_event(b"data: x\rdata: y\r\ndata: z\n\n").data == "x\ny\nz"
