"""A run records the function calls it made, whole or streamed in pieces."""

from estimator.builders import run_from_chat_response, run_from_chat_stream
from estimator.model import ToolCall


def _delta(call: dict[str, object]) -> dict[str, object]:
    return {"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]}


def test_a_chat_answer_records_its_tool_calls_whole_and_streamed() -> None:
    whole = run_from_chat_response(
        {"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "content": None,
            "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "get", "arguments": '{"a": 1}'}},
                {"id": "b", "type": "function", "function": {"name": "put", "arguments": "{}"}},
            ],
        }}]}
    )  # fmt: skip
    assert whole.tool_calls == (ToolCall("get", '{"a": 1}'), ToolCall("put", "{}"))
    streamed = run_from_chat_stream([
        _delta({"index": 0, "id": "a", "function": {"name": "get", "arguments": ""}}),
        _delta({"index": 0, "function": {"arguments": '{"a"'}}),
        _delta({"index": 0, "function": {"arguments": ": 1}"}}),
        _delta({"index": 1, "id": "b", "function": {"name": "put", "arguments": "{}"}}),
    ])  # fmt: skip
    assert streamed.tool_calls == whole.tool_calls


def test_a_text_answer_has_no_tool_calls() -> None:
    run = run_from_chat_response({"choices": [{"index": 0, "message": {"content": "hi"}}]})
    assert run.tool_calls == ()
