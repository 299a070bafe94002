"""The Responses API's byte surgery: what a plain answer looks like, learned per location and
event type, and byte-exact restoring of an augmented answer to it.

The fixed cases are real vLLM 0.32 (CPU) answers to the same request with and without
`include: ["message.output_text.logprobs"], top_logprobs: 2` (tests/shadow/data/vllm_responses:
`plain`/`lp`, and `schema_*` with a JSON schema whose properties are named `logprobs` and
`top_logprobs`, echoed back in the response's `text`). Ids and creation times differ per call;
every other byte must be equal. The random cases come from the reference upstream's renderer,
whose plain answer of the same tokens is known exactly."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.shadow.config import Eligibility
from proxy.shadow.responses_wire import (
    INCLUDE_LOGPROBS,
    PlainForm,
    echo_key,
    form_of_body,
    form_of_events,
    restore,
)
from proxy.shadow.wire import (
    augmented_upstream_body,
    client_wants_logprobs,
    is_greedy,
    replay_body,
)
from proxy.sse import SSESplitter, event_json
from reference.engine import TokenEvent, TokenInfo
from reference.policy import SamplingParams
from reference.requests import GenerationRequest
from reference.responses_api import EventStream, ResponseEnvelope, ResponsesRequest, response_object

DATA = Path(__file__).parent / "data" / "vllm_responses"
EVENT_TYPES = {
    "response.created", "response.in_progress", "response.output_item.added",
    "response.content_part.added", "response.output_text.delta", "response.output_text.done",
    "response.content_part.done", "response.output_item.done", "response.completed",
}  # fmt: skip


def _normalise(data: bytes) -> bytes:
    data = re.sub(rb'"(resp|msg)_[0-9a-f]+"', b'"ID"', data)
    return re.sub(rb'"created_at":\d+', b'"created_at":0', data)


def _events(raw: bytes) -> list[bytes]:
    return SSESplitter().feed(raw)


def _parsed(events: list[bytes]) -> tuple[Any, ...]:
    return tuple(p for e in events if (p := event_json(e)) is not None)


@pytest.mark.parametrize("name", ["plain", "schema_plain"])
def test_vllm_body_restored_byte_for_byte(name: str) -> None:
    plain = (DATA / f"{name}.json").read_bytes()
    augmented = (DATA / f"{name.replace('plain', 'lp')}.json").read_bytes()
    assert b'"logprobs":[{' in augmented and b'"top_logprobs":2,' in augmented
    form = form_of_body(plain)
    assert form == PlainForm({(None, "content"): b"null", (None, "echo"): b"null"})
    restored = restore(augmented, form, event=False)
    assert _normalise(restored) == _normalise(plain)
    assert b'"logprobs":[{' not in restored
    assert restore(plain, form, event=False) == plain  # a plain answer is left as it is


@pytest.mark.parametrize("name", ["plain", "schema_plain"])
def test_vllm_stream_restored_event_by_event(name: str) -> None:
    plain = _events((DATA / f"{name}.sse").read_bytes())
    augmented = _events((DATA / f"{name.replace('plain', 'lp')}.sse").read_bytes())
    assert len(plain) == len(augmented)
    form = form_of_events(_parsed(plain))
    assert form is not None
    # What vLLM sends without logprobs, by event type: [] in the deltas, the added part and
    # output_text.done, null in the done-items and the final response; the echo is null.
    assert form.values[("response.output_text.delta", "event")] == b"[]"
    assert form.values[("response.output_text.done", "event")] == b"[]"
    assert form.values[("response.content_part.added", "part")] == b"[]"
    assert form.values[("response.content_part.done", "part")] == b"null"
    assert form.values[("response.output_item.done", "content")] == b"null"
    assert form.values[("response.completed", "content")] == b"null"
    assert form.values[("response.completed", "echo")] == b"null"
    seen = set()
    for mine, theirs in zip(augmented, plain, strict=True):
        kind = orjson.loads(mine.split(b"data: ", 1)[1])["type"]
        seen.add(kind)
        restored = restore(mine, form, event=True)
        assert _normalise(restored) == _normalise(theirs), kind
        assert restore(theirs, form, event=True) == theirs
    assert seen == EVENT_TYPES


def test_echoed_schema_keys_named_logprobs_are_never_touched() -> None:
    augmented = (DATA / "schema_lp.json").read_bytes()
    schema = b'"properties":{"logprobs":{"type":"array","items":{"type":"integer"}},'
    assert schema in augmented and b'"top_logprobs":{"type":"integer"}' in augmented
    form = PlainForm({(None, "content"): b"null", (None, "echo"): None})
    restored = restore(augmented, form, event=False)
    assert schema in restored and b'"top_logprobs":{"type":"integer"}' in restored
    assert b'"top_logprobs":2' not in restored  # the echo went (learned: absent)
    assert orjson.loads(restored)["text"] == orjson.loads(augmented)["text"]


# -- the reference renderer: random tokens, plain and augmented answers of the same decode ----
TRICKY = ["logprobs", '"logprobs":', '{"logprobs": [1]}', "\\", 'a\\"b', "}]", "é→🙂", " ", ""]


def _token(rng: random.Random, i: int) -> TokenInfo:
    text = rng.choice([*TRICKY, "the", " cat", "\n"])
    return TokenInfo(i, text, text.encode())


def _decode(rng: random.Random) -> list[TokenEvent]:
    events = []
    n = rng.randint(1, 6)
    for i in range(n):
        token = _token(rng, i)
        top = tuple((_token(rng, 100 + j), -rng.random() * 5) for j in range(3))
        finish = ("length" if rng.random() < 0.5 else "stop") if i == n - 1 else None
        events.append(TokenEvent(token, -rng.random(), top, token.text, finish))
    return events


def _render(
    events: list[TokenEvent], with_logprobs: bool, instructions: str, stream: bool
) -> list[bytes]:
    params = SamplingParams(max_tokens=8, temperature=0.0, top_p=1.0, top_k=0, seed=None,
                            stop=(), top_logprobs=3 if with_logprobs else None)  # fmt: skip
    gen = GenerationRequest("chat", "m", None, None, params, stream, False)
    req = ResponsesRequest(gen, instructions, 3 if with_logprobs else None, 0.0, 1.0, 8)
    env = ResponseEnvelope("resp_1", "msg_1", 7, "m", req)
    if not with_logprobs:  # a plain answer has no logprobs at all
        events = [TokenEvent(e.token, None, (), e.text, e.finish_reason) for e in events]
    if not stream:
        return [orjson.dumps(response_object(env, events, 5))]
    out = EventStream(env)
    items = out.opening() + [x for ev in events for x in out.delta(ev)] + out.closing(5)
    return [b"event: " + k.encode() + b"\ndata: " + orjson.dumps(o) + b"\n\n" for k, o in items]


@pytest.mark.parametrize("seed", range(40))
def test_random_answers_restored_exactly(seed: int) -> None:
    rng = random.Random(seed)
    decode = _decode(rng)
    instructions = "".join(rng.sample(TRICKY, 3))
    stream = seed % 2 == 1
    plain = _render(decode, False, instructions, stream)
    augmented = _render(decode, True, instructions, stream)
    teacher = _render(_decode(random.Random(seed + 1000)), False, "other", stream)
    if stream:
        form = form_of_events(_parsed(teacher))
    else:
        form = form_of_body(teacher[0])
    assert form is not None
    assert [restore(a, form, event=stream) for a in augmented] == plain


def test_an_upstream_without_the_key_gets_it_dropped_and_spacing_kept() -> None:
    """Another upstream's plain parts have no logprobs key; pretty-printed bodies keep their
    spacing around every byte that is not removed."""
    plain = {"id": "r", "object": "response", "status": "completed", "top_logprobs": 0,
             "output": [{"type": "message", "content": [{"type": "output_text", "text": "hi",
                                                          "annotations": []}]}]}  # fmt: skip
    augmented = orjson.loads(orjson.dumps(plain))
    augmented["output"][0]["content"][0]["logprobs"] = [
        {"token": "hi", "logprob": -0.1, "top_logprobs": [{"token": "hi", "logprob": -0.1}]}
    ]
    augmented["top_logprobs"] = 5
    for option in (0, orjson.OPT_INDENT_2):
        form = form_of_body(orjson.dumps(plain, option=option))
        assert form == PlainForm({(None, "echo"): b"0", (None, "content"): None})
        restored = restore(orjson.dumps(augmented, option=option), form, event=False)
        assert restored == orjson.dumps(plain, option=option)
    first = {**plain, "output": [{"type": "message", "content": [
        {"logprobs": [], "type": "output_text", "text": ""}]}]}  # fmt: skip
    aug_first = orjson.loads(orjson.dumps(first))
    aug_first["output"][0]["content"][0]["logprobs"] = [{"token": "x", "logprob": -1}]
    no_key = PlainForm({(None, "content"): None, (None, "echo"): b"0"})
    expected = b'{"type":"output_text","text":""}'
    assert expected in restore(orjson.dumps(aug_first), no_key, event=False)


def test_a_plain_answer_with_logprobs_or_without_text_teaches_nothing() -> None:
    body = orjson.loads((DATA / "lp.json").read_bytes())
    assert form_of_body(orjson.dumps(body)) is None  # logprobs in a "plain" answer: not plain
    body["output"] = [{"type": "function_call", "name": "f", "arguments": "{}"}]
    assert form_of_body(orjson.dumps(body)) is None  # no output_text part: nothing to learn
    events = _parsed(_events((DATA / "plain.sse").read_bytes()))
    assert form_of_events(tuple(e for e in events if "delta" not in e["type"])) is None


def test_unknown_event_types_take_the_value_of_their_location() -> None:
    form = form_of_events(_parsed(_events((DATA / "plain.sse").read_bytes())))
    assert form is not None
    event = b'event: response.incomplete\ndata: {"response":{"output":[{"content":[{"text":"a",'
    event += b'"logprobs":[{"token":"a","logprob":-1.0}]}]}],"top_logprobs":2},"type":"x"}\n\n'
    restored = restore(event, form, event=True)
    assert b'"logprobs":null' in restored and b'"top_logprobs":null' in restored
    assert restore(b"data: [DONE]\n\n", form, event=True) == b"data: [DONE]\n\n"
    assert restore(b": keep-alive\n\n", form, event=True) == b": keep-alive\n\n"


# -- the request side ------------------------------------------------------------------------------
RULES = Eligibility()


def test_eligibility_and_what_the_client_asked() -> None:
    body: dict[str, Any] = {"model": "m", "input": "hi", "temperature": 0}
    assert is_greedy("responses", body, RULES)
    assert not is_greedy("responses", {**body, "temperature": 0.7}, RULES)
    assert not is_greedy("responses", {"model": "m", "input": "hi"}, RULES)
    assert is_greedy("responses", {"model": "m", "input": "hi"},
                     Eligibility(missing_temperature_is_greedy=True))  # fmt: skip
    assert not client_wants_logprobs("responses", {**body, "top_logprobs": 3})
    assert client_wants_logprobs("responses", {**body, "include": [INCLUDE_LOGPROBS]})
    assert echo_key(body) == b"null" and echo_key({**body, "top_logprobs": 3}) == b"3"


def test_augmentation_keeps_the_clients_include() -> None:
    body = {"model": "m", "input": "hi", "temperature": 0, "stream": True,
            "include": ["reasoning.encrypted_content"]}  # fmt: skip
    sent = orjson.loads(augmented_upstream_body("responses", body, 5))
    assert sent["include"] == ["reasoning.encrypted_content", INCLUDE_LOGPROBS]
    assert sent["top_logprobs"] == 5 and sent["stream"] is True
    assert body["include"] == ["reasoning.encrypted_content"]  # the client's body is untouched
    plain = orjson.loads(augmented_upstream_body("responses", {"input": "x"}, 2))
    assert plain["include"] == [INCLUDE_LOGPROBS]


def test_the_replay_body() -> None:
    body = {"model": "m", "input": "hi", "temperature": 0, "stream": True, "store": True,
            "stream_options": {"include_obfuscation": False}, "max_output_tokens": 100}  # fmt: skip
    replay = orjson.loads(replay_body("responses", body, max_tokens=7, logprobs_k=4))
    assert replay["stream"] is False and "stream_options" not in replay
    assert replay["max_output_tokens"] == 7 and "max_tokens" not in replay
    assert replay["include"] == [INCLUDE_LOGPROBS] and replay["top_logprobs"] == 4
    assert replay["store"] is False and replay["background"] is False
    assert replay["input"] == "hi" and replay["temperature"] == 0
    without = orjson.loads(replay_body("responses", body, max_tokens=None, logprobs_k=None))
    assert "include" not in without and without["max_output_tokens"] == 100
