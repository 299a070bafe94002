"""Tool calls and JSON answers, the simple honest way: no guided decoding.

A chat request that forces a function (`tool_choice: {"type": "function", "function": {"name":
N}}`, or `"required"` with a single tool offered) gets its greedy text back as the call's
arguments: `tool_calls: [{"function": {"name": N, "arguments": <text>}}]`, content null, streamed
as argument pieces one token at a time (the chunks keep their logprobs). The text is whatever the
model writes, so the arguments may not parse as JSON: decision comparisons count them so. Without a
forced function (`auto`, `none`, absent) the model answers in text, as a model that chose not to
call a tool. A `response_format` of `json_object` / `json_schema` is accepted and the content is
the greedy text as it is (no constraint is applied).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reference.requests import ApiError


def _names(tools: Any) -> list[str]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise ApiError(400, "tools must be a list", "tools")
    names = []
    for tool in tools:
        fn = tool.get("function") if isinstance(tool, dict) else None
        name = fn.get("name") if isinstance(fn, dict) else None
        if not (
            isinstance(tool, dict) and tool.get("type") == "function" and isinstance(name, str)
        ):
            raise ApiError(400, "each tool needs type `function` and a function name", "tools")
        names.append(name)
    return names


def forced_tool(body: Mapping[str, Any]) -> str | None:
    """The function a chat request forces, or None when the model may answer in text."""
    names = _names(body.get("tools"))
    choice = body.get("tool_choice")
    if choice is None or choice in ("auto", "none"):
        return None
    if choice == "required":
        if len(names) != 1:
            raise ApiError(
                400,
                "tool_choice `required` needs exactly one tool on the reference upstream "
                "(it does not choose between tools); name the function instead",
                "tool_choice",
            )
        return names[0]
    fn = choice.get("function") if isinstance(choice, dict) else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not (
        isinstance(choice, dict) and choice.get("type") == "function" and isinstance(name, str)
    ):
        raise ApiError(400, "tool_choice must be auto, none, required or a named function",
                       "tool_choice")  # fmt: skip
    if name not in names:
        raise ApiError(400, f"tool_choice names `{name}`, which is not among the tools",
                       "tool_choice")  # fmt: skip
    return name


def call_id(response_id: str) -> str:
    return "call_" + response_id.rsplit("-", 1)[-1][:24]


def as_tool_call(body: dict[str, Any], name: str) -> dict[str, Any]:
    """A full chat response whose text becomes the forced function's arguments."""
    message = body["choices"][0]["message"]
    call = {"id": call_id(body["id"]), "type": "function",
            "function": {"name": name, "arguments": message["content"]}}  # fmt: skip
    message["content"] = None
    message["tool_calls"] = [call]
    return body


def as_tool_chunk(chunk: dict[str, Any], name: str, first: bool) -> dict[str, Any]:
    """A stream chunk whose text delta becomes an arguments piece (the first names the call)."""
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            continue
        if first:
            call = {"index": 0, "id": call_id(chunk["id"]), "type": "function",
                    "function": {"name": name, "arguments": ""}}  # fmt: skip
            choice["delta"] = {"role": "assistant", "content": None, "tool_calls": [call]}
        elif "content" in delta:
            piece = {"index": 0, "function": {"arguments": delta.pop("content")}}
            delta["tool_calls"] = [piece]
    return chunk
