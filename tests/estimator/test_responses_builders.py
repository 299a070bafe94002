"""Runs from Responses API answers: message text and its logprobs, function calls, reasoning
items, finish reasons; whole bodies and streams give the same run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from estimator.builders import (
    BuildError,
    run_from_responses_response,
    run_from_responses_stream,
    text_tokens,
)
from estimator.model import ToolCall
from proxy.sse import SSESplitter, event_json

DATA = Path(__file__).parents[1] / "shadow" / "data" / "vllm_responses"


def _stream(name: str) -> list[Any]:
    raw = (DATA / name).read_bytes()
    return [p for e in SSESplitter().feed(raw) if (p := event_json(e)) is not None]


def test_vllm_body_with_logprobs() -> None:
    run = run_from_responses_response(orjson.loads((DATA / "lp.json").read_bytes()))
    assert run.text == "Hello there! I'm"
    assert run.tokens == ("Hello", " there", "!", " I", "'m")
    assert run.logprobs is not None and run.logprobs[0] == pytest.approx(-2.1504807472229004)
    assert run.top_logprobs is not None and run.top_logprobs[0][1] == ("I", -2.2754807472229004)
    assert run.finish_reason == "length"  # incomplete: max_output_tokens


def test_vllm_plain_body_is_text_only() -> None:
    run = run_from_responses_response(orjson.loads((DATA / "plain.json").read_bytes()))
    assert run.logprobs is None and run.tokens == text_tokens("Hello there! I'm")


def test_vllm_stream_gives_the_run_of_its_final_response() -> None:
    events = _stream("lp.sse")
    run = run_from_responses_stream(events)
    assert run.text == "Hello there!" and run.tokens == ("Hello", " there", "!")
    assert run == run_from_responses_response(events[-1]["response"])
    plain = run_from_responses_stream(_stream("plain.sse"))  # deltas carry [] there
    assert plain.logprobs is None and plain.text == "Hello there!"


def test_deltas_supply_logprobs_the_final_response_lacks() -> None:
    events = _stream("lp.sse")
    final = events[-1]["response"]
    final["output"][0]["content"][0]["logprobs"] = None  # as older vLLM sends it
    run = run_from_responses_stream(events)
    assert run.tokens == ("Hello", " there", "!") and run.top_logprobs is not None
    cut = events[:-1]
    with pytest.raises(BuildError, match=r"response\.completed"):
        run_from_responses_stream(cut)  # a stream cut short is not comparable


def _body(output: list[Any], status: str = "completed", reason: str | None = None) -> Any:
    details = {"reason": reason} if reason else None
    return {"object": "response", "status": status, "incomplete_details": details,
            "output": output}  # fmt: skip


def _message(text: str, logprobs: Any = None) -> Any:
    return {"type": "message", "role": "assistant", "content": [
        {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}]}  # fmt: skip


def test_function_calls_are_tool_calls() -> None:
    call = {"type": "function_call", "call_id": "c1", "name": "get_weather",
            "arguments": '{"city":"Paris"}', "status": "completed"}  # fmt: skip
    run = run_from_responses_response(_body([call, {**call, "name": "get_time"}]))
    assert run.tool_calls == (
        ToolCall("get_weather", '{"city":"Paris"}'),
        ToolCall("get_time", '{"city":"Paris"}'),
    )
    assert run.text == "" and run.tokens == ()
    events = [
        {"type": "response.output_item.done", "item": call},
        {"type": "response.completed", "response": _body([])},  # no output listed: the items
    ]
    assert run_from_responses_stream(events).tool_calls == (
        ToolCall("get_weather", call["arguments"]),
    )


def test_reasoning_text_is_compared_by_text_before_the_message() -> None:
    lp = [{"token": "4", "logprob": -0.1, "top_logprobs": [{"token": "4", "logprob": -0.1}]}]
    reasoning = {"type": "reasoning", "summary": [{"type": "summary_text", "text": "Adding."}],
                 "content": [{"type": "reasoning_text", "text": "2 plus 2 is 4."}]}  # fmt: skip
    run = run_from_responses_response(_body([reasoning, _message("4", lp)]))
    assert run.text == "2 plus 2 is 4.\n\n4" and run.logprobs is None
    assert run.tokens == text_tokens(run.text)
    summary_only = {**reasoning, "content": []}  # hosted models: a summary, not the reasoning
    run = run_from_responses_response(_body([summary_only, _message("4", lp)]))
    assert run.text == "4" and run.tokens == ("4",)


def test_finish_reasons_and_unfinished_responses() -> None:
    assert run_from_responses_response(_body([_message("a")])).finish_reason == "stop"
    cut = _body([_message("a")], "incomplete", "max_output_tokens")
    assert run_from_responses_response(cut).finish_reason == "length"
    flagged = _body([_message("a")], "incomplete", "content_filter")
    assert run_from_responses_response(flagged).finish_reason == "content_filter"
    for status in ("queued", "in_progress", "failed"):
        with pytest.raises(BuildError, match="status"):
            run_from_responses_response(_body([], status))
    with pytest.raises(BuildError, match="output"):
        run_from_responses_response({"status": "completed"})
