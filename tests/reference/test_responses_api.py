"""The reference upstream's /v1/responses with the real openai SDK: whole and streamed, logprobs
through `include` and `top_logprobs`, `max_output_tokens`, `instructions`, message input items,
the event sequence, and what a plain answer carries where logprobs would be."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from proxy.sse import SSESplitter, event_json
from reference.launch import ReferenceProcess

pytestmark = pytest.mark.reference

LOGPROBS = ["message.output_text.logprobs"]
EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


@pytest.fixture(scope="module")
def api(serial_server: ReferenceProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=serial_server.base_url, api_key="unused", max_retries=0) as c:
        yield c


def test_whole_with_logprobs(api: openai.OpenAI) -> None:
    resp = api.responses.create(
        model="smollm2",
        input="Name a fruit.",
        instructions="Answer in one word.",
        temperature=0,
        max_output_tokens=6,
        include=LOGPROBS,  # type: ignore[list-item]
        top_logprobs=3,
    )
    assert resp.object == "response" and resp.id.startswith("resp_")
    assert resp.status in {"completed", "incomplete"}
    message = resp.output[0]
    assert message.type == "message" and message.role == "assistant"
    part = message.content[0]
    assert part.type == "output_text" and part.text == resp.output_text
    assert part.logprobs is not None and resp.usage is not None
    assert len(part.logprobs) == resp.usage.output_tokens <= 6
    assert all(len(lp.top_logprobs) == 3 for lp in part.logprobs)
    assert all(lp.top_logprobs[0].logprob >= lp.top_logprobs[-1].logprob for lp in part.logprobs)
    if resp.status == "incomplete":
        assert resp.incomplete_details is not None
        assert resp.incomplete_details.reason == "max_output_tokens"
    assert resp.top_logprobs == 3 and resp.instructions == "Answer in one word."


def test_message_items_equal_a_string_input(api: openai.OpenAI) -> None:
    kw: dict[str, Any] = {"model": "smollm2", "temperature": 0, "max_output_tokens": 8}
    text = api.responses.create(input="Name a colour.", **kw).output_text
    items = [{"role": "user", "content": [{"type": "input_text", "text": "Name a colour."}]}]
    again = api.responses.create(input=items, **kw)
    assert again.output_text == text and text


def test_streamed_events_and_sdk_stream(api: openai.OpenAI) -> None:
    kw: dict[str, Any] = {
        "model": "smollm2", "input": "Count to five.", "temperature": 0, "max_output_tokens": 10
    }  # fmt: skip
    whole = api.responses.create(include=LOGPROBS, top_logprobs=2, **kw)
    events = list(api.responses.create(stream=True, include=LOGPROBS, top_logprobs=2, **kw))
    kinds = [e.type for e in events]
    assert [k for i, k in enumerate(kinds) if i == 0 or kinds[i - 1] != k] == EVENTS
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert "".join(d.delta for d in deltas) == whole.output_text
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output_text == whole.output_text
    assert [lp.token for lp in final.output[0].content[0].logprobs] == [  # type: ignore[union-attr]
        lp.token
        for lp in whole.output[0].content[0].logprobs  # type: ignore[union-attr]
    ]
    with api.responses.stream(**kw) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        assert stream.get_final_response().output_text == text == whole.output_text


def test_plain_answers_carry_what_vllm_sends(serial_server: ReferenceProcess) -> None:
    """Without logprobs: `null` in the body and the done-items, `[]` in the deltas, the added part
    and output_text.done; the echo is null. With them, the deltas carry entries."""
    url = f"{serial_server.base_url}/responses"
    body = {"model": "smollm2", "input": "Hi", "temperature": 0, "max_output_tokens": 4}
    plain = orjson.loads(httpx.post(url, json=body, timeout=120).content)
    assert plain["output"][0]["content"][0]["logprobs"] is None and plain["top_logprobs"] is None
    for include in (False, True):
        extra = {"include": LOGPROBS, "top_logprobs": 2} if include else {}
        raw = httpx.post(url, json={**body, **extra, "stream": True}, timeout=120).content
        assert not raw.rstrip().endswith(b"[DONE]")
        events = [p for e in SSESplitter().feed(raw) if (p := event_json(e)) is not None]
        lp = {e["type"]: e.get("logprobs", e.get("part", {}).get("logprobs")) for e in events}
        assert lp["response.content_part.added"] == [] and lp["response.output_text.done"] == []
        delta = next(e for e in events if e["type"] == "response.output_text.delta")
        part = events[-2]["item"]["content"][0]["logprobs"]
        if include:
            assert delta["logprobs"] and "bytes" not in delta["logprobs"][0] and part
        else:
            assert delta["logprobs"] == [] and part is None
            assert events[-1]["response"]["top_logprobs"] is None


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input"),
        ({"include": "message.output_text.logprobs"}, "include"),
        ({"top_logprobs": 99}, "top_logprobs"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
    ],
)
def test_bad_requests_are_openai_errors(
    serial_server: ReferenceProcess, extra: dict[str, object], param: str
) -> None:
    body = {"model": "smollm2", "input": "Hi", **extra}
    resp = httpx.post(f"{serial_server.base_url}/responses", json=body, timeout=60)
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == param
