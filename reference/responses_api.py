"""The Responses API (`POST /v1/responses`) of the reference upstream: request validation and the
bodies and stream events, in vLLM's shapes.

A request is `input` (a string, or message items with text content) after optional
`instructions`, decoded with the chat template like a chat request. Logprobs come with
`include: ["message.output_text.logprobs"]` and `top_logprobs`; `max_output_tokens` caps the
length. The answer is one `message` output item with one `output_text` part. Without logprobs its
`logprobs` is what vLLM sends then: `null` in a whole body and in the done-items of a stream, `[]`
in `response.content_part.added` and in every `response.output_text.delta` / `.done`; the
response echoes `top_logprobs` (`null` unless logprobs were asked).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reference.engine import TokenEvent
from reference.requests import (
    MAX_TOP_LOGPROBS,
    ApiError,
    GenerationRequest,
    _common,
    _content_text,
    _integer,
)
from reference.responses import chat_logprobs

INCLUDE_LOGPROBS = "message.output_text.logprobs"
_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})
_ROLES = frozenset({"user", "assistant", "system", "developer"})


@dataclass(frozen=True)
class ResponsesRequest:
    """A validated /v1/responses request: the generation, and what the answer echoes."""

    generation: GenerationRequest
    instructions: str | None
    top_logprobs: int | None  # k when logprobs are included, else None (echoed)
    temperature: float
    top_p: float
    max_output_tokens: int | None


def _content(content: Any) -> str:
    if isinstance(content, list):
        texts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") in _TEXT_PARTS):
                raise ApiError(400, "only text content parts are supported", "input")
            texts.append(str(part.get("text", "")))
        return "".join(texts)
    return _content_text(content)


def _messages(body: Mapping[str, Any]) -> list[dict[str, str]]:
    messages: list[dict[str, str]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise ApiError(400, "instructions must be a string", "instructions")
        messages.append({"role": "system", "content": instructions})
    value = body.get("input")
    if isinstance(value, str) and value:
        messages.append({"role": "user", "content": value})
    elif isinstance(value, list) and value:
        for item in value:
            if not isinstance(item, dict) or item.get("type", "message") != "message":
                raise ApiError(400, "only message input items are supported", "input")
            role = item.get("role")
            if role not in _ROLES:
                raise ApiError(400, "each input message needs a role", "input")
            role = "system" if role == "developer" else role
            messages.append({"role": str(role), "content": _content(item.get("content"))})
    else:
        raise ApiError(400, "input is required (a non-empty string or list of messages)", "input")
    return messages


def parse_responses(
    body: Mapping[str, Any], model_name: str, default_max_tokens: int
) -> ResponsesRequest:
    for key in ("previous_response_id", "conversation"):
        if body.get(key) is not None:
            raise ApiError(400, f"{key} is not supported (nothing is stored)", key)
    if body.get("background"):
        raise ApiError(400, "background responses are not supported", "background")
    include = body.get("include")
    if include is not None and not (
        isinstance(include, list) and all(isinstance(i, str) for i in include)
    ):
        raise ApiError(400, "include must be a list of strings", "include")
    with_logprobs = include is not None and INCLUDE_LOGPROBS in include
    k = _integer(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
    messages = tuple(_messages(body))
    limit = _integer(body, "max_output_tokens", 1, 1 << 20)
    sampling = {
        key: body[key] for key in ("model", "temperature", "top_p", "top_k", "stream", "seed")
        if key in body
    }  # fmt: skip
    if limit is not None:
        sampling["max_tokens"] = limit
    top = (k or 0) if with_logprobs else None
    params, stream, _ = _common(sampling, model_name, default_max_tokens, top)
    generation = GenerationRequest("chat", model_name, None, None, params, stream, False, messages)
    return ResponsesRequest(
        generation, body.get("instructions"), top, params.temperature, params.top_p, limit
    )


# -- the answer ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ResponseEnvelope:
    """What the bodies and events of one response share."""

    id: str
    message_id: str
    created_at: int
    model: str
    request: ResponsesRequest

    @classmethod
    def new(cls, created_at: int, model: str, request: ResponsesRequest) -> ResponseEnvelope:
        return cls(
            f"resp_{secrets.token_hex(8)}", f"msg_{secrets.token_hex(8)}", created_at, model,
            request,
        )  # fmt: skip


def _logprobs(events: Sequence[TokenEvent], with_bytes: bool = True) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = chat_logprobs(events)["content"]
    if with_bytes:
        return entries
    return [  # streamed deltas name tokens without their bytes, as vLLM's do
        {
            "token": e["token"],
            "logprob": e["logprob"],
            "top_logprobs": [
                {"token": t["token"], "logprob": t["logprob"]} for t in e["top_logprobs"]
            ],
        }
        for e in entries
    ]


def _part(text: str, logprobs: Any) -> dict[str, Any]:
    return {"annotations": [], "text": text, "type": "output_text", "logprobs": logprobs}


def _message(env: ResponseEnvelope, parts: list[dict[str, Any]], status: str) -> dict[str, Any]:
    return {
        "id": env.message_id, "content": parts, "role": "assistant", "status": status,
        "type": "message",
    }  # fmt: skip


def response_object(
    env: ResponseEnvelope,
    events: Sequence[TokenEvent] | None,
    prompt_tokens: int,
) -> dict[str, Any]:
    """The response: in progress (events None: no output, no usage yet) or finished."""
    req = env.request
    output: list[dict[str, Any]] = []
    usage: dict[str, Any] | None = None
    status, details = "in_progress", None
    if events is not None:
        text = "".join(ev.text for ev in events)
        logprobs = _logprobs(events) if req.top_logprobs is not None else None
        output.append(_message(env, [_part(text, logprobs)], "completed"))
        generated = sum(1 for ev in events if ev.token is not None)
        usage = {
            "input_tokens": prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": generated,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + generated,
        }
        finish = events[-1].finish_reason if events else "stop"
        status = "incomplete" if finish == "length" else "completed"
        details = {"reason": "max_output_tokens"} if finish == "length" else None
    return {
        "id": env.id,
        "created_at": env.created_at,
        "incomplete_details": details,
        "instructions": req.instructions,
        "metadata": None,
        "model": env.model,
        "object": "response",
        "output": output,
        "parallel_tool_calls": True,
        "temperature": req.temperature,
        "tool_choice": "none",
        "tools": [],
        "top_p": req.top_p,
        "background": False,
        "max_output_tokens": req.max_output_tokens,
        "status": status,
        "text": None,
        "top_logprobs": req.top_logprobs,
        "truncation": "disabled",
        "usage": usage,
    }


class EventStream:
    """The stream's events in order, each with its sequence_number: `opening()`, then `delta()`
    per token event, then `closing()`. A delta event goes out only for released text: the
    logprobs of tokens whose text is held back ride on the next one (the done-items carry all)."""

    def __init__(self, env: ResponseEnvelope) -> None:
        self._env = env
        self._sequence = 0
        self._events: list[TokenEvent] = []
        self._pending: list[TokenEvent] = []

    def _event(self, kind: str, **fields: Any) -> tuple[str, dict[str, Any]]:
        body = {**fields, "sequence_number": self._sequence, "type": kind}
        self._sequence += 1
        return kind, body

    def _at(self) -> dict[str, Any]:
        return {"item_id": self._env.message_id, "output_index": 0, "content_index": 0}

    def opening(self) -> list[tuple[str, dict[str, Any]]]:
        started = response_object(self._env, None, 0)
        empty: list[Any] = []
        return [
            self._event("response.created", response=started),
            self._event("response.in_progress", response=started),
            self._event(
                "response.output_item.added",
                item=_message(self._env, [], "in_progress"),
                output_index=0,
            ),
            self._event("response.content_part.added", part=_part("", empty), **self._at()),
        ]

    def delta(self, event: TokenEvent) -> list[tuple[str, dict[str, Any]]]:
        self._events.append(event)
        self._pending.append(event)
        if not event.text:
            return []
        pending, self._pending = self._pending, []
        logprobs = (
            _logprobs(pending, with_bytes=False) if self._env.request.top_logprobs is not None
            else []
        )  # fmt: skip
        return [
            self._event(
                "response.output_text.delta", delta=event.text, logprobs=logprobs, **self._at()
            )
        ]

    def closing(self, prompt_tokens: int) -> list[tuple[str, dict[str, Any]]]:
        final = response_object(self._env, self._events, prompt_tokens)
        part = final["output"][0]["content"][0]
        return [
            self._event("response.output_text.done", text=part["text"], logprobs=[], **self._at()),
            self._event("response.content_part.done", part=part, **self._at()),
            self._event("response.output_item.done", item=final["output"][0], output_index=0),
            self._event("response.completed", response=final),
        ]

    def error(self, err: ApiError) -> tuple[str, dict[str, Any]]:
        return self._event("error", code=str(err.status), message=err.message, param=err.param)
