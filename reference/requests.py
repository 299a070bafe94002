"""Request validation: OpenAI JSON bodies → `GenerationRequest`, or an `ApiError` (400/404)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from reference.policy import SamplingParams

MAX_TOP_LOGPROBS = 20  # vLLM's default --max-logprobs; OpenAI's chat limit


_ERROR_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


class ApiError(Exception):
    """An error for the client, rendered as `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    def body(self) -> dict[str, Any]:
        kind = _ERROR_TYPES.get(self.status, "APIError")
        error = {"message": self.message, "type": kind, "param": self.param, "code": self.status}
        return {"error": error}


@dataclass(frozen=True)
class GenerationRequest:
    """A validated chat or completions request."""

    kind: str  # "chat" | "completions"
    model: str
    prompt_text: str | None  # None when the prompt was given as token ids
    prompt_ids: tuple[int, ...] | None
    params: SamplingParams
    stream: bool
    include_usage: bool
    messages: tuple[Mapping[str, Any], ...] = ()
    tokens_as_ids: bool = False  # vLLM's return_tokens_as_token_ids: logprobs name token ids


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


def _number(body: Mapping[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ApiError(400, f"{key} must be a number", key)
    if not lo <= float(value) <= hi:
        raise ApiError(400, f"{key} must be between {lo} and {hi}, got {value}", key)
    return float(value)


def _integer(body: Mapping[str, Any], key: str, lo: int, hi: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"{key} must be an integer", key)
    if not lo <= value <= hi:
        raise ApiError(400, f"{key} must be between {lo} and {hi}, got {value}", key)
    return value


def _stop(body: Mapping[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(400, "stop must be a non-empty string or a list of them", "stop")
    if len(stop) > 4:
        raise ApiError(400, "at most 4 stop sequences", "stop")
    return tuple(stop)


def _common(
    body: Mapping[str, Any], model_name: str, default_max_tokens: int, top_logprobs: int | None
) -> tuple[SamplingParams, bool, bool]:
    model = body.get("model")
    if not isinstance(model, str):
        raise ApiError(400, "model is required (a string)", "model")
    if model != model_name:
        raise ApiError(404, f"The model `{model}` does not exist.", "model")
    n = _integer(body, "n", 1, 128)
    if n not in (None, 1):
        raise ApiError(400, "n > 1 is not supported by the reference upstream", "n")
    max_tokens = _integer(body, "max_completion_tokens", 1, 1 << 20)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", 1, 1 << 20)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be a boolean", "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ApiError(400, "stream_options must be an object", "stream_options")
    include_usage = bool(options and options.get("include_usage"))
    seed = _integer(body, "seed", -(1 << 63), (1 << 63) - 1)
    top_k = _integer(body, "top_k", -1, 1 << 20)
    params = SamplingParams(
        max_tokens=max_tokens if max_tokens is not None else default_max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 1e-9, 1.0),
        top_k=max(0, top_k or 0),
        seed=None if seed is None else seed & ((1 << 63) - 1),
        stop=_stop(body),
        top_logprobs=top_logprobs,
    )
    return params, stream, include_usage


def _tokens_as_ids(body: Mapping[str, Any]) -> bool:
    value = body.get("return_tokens_as_token_ids")
    if not isinstance(value, bool | None):
        raise ApiError(
            400, "return_tokens_as_token_ids must be a boolean", "return_tokens_as_token_ids"
        )
    return bool(value)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text"):
                raise ApiError(400, "only text content parts are supported", "messages")
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    if content is None:
        return ""
    raise ApiError(400, "message content must be a string or a list of text parts", "messages")


def parse_chat(
    body: Mapping[str, Any], model_name: str, default_max_tokens: int
) -> GenerationRequest:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages is required (a non-empty list)", "messages")
    clean: list[Mapping[str, Any]] = []
    for msg in messages:
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise ApiError(400, "each message needs a role and content", "messages")
        clean.append({"role": msg["role"], "content": _content_text(msg.get("content"))})
    logprobs = body.get("logprobs", False)
    if not isinstance(logprobs, bool | None):
        raise ApiError(400, "logprobs must be a boolean", "logprobs")
    k = _integer(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
    if k is not None and not logprobs:
        raise ApiError(400, "top_logprobs requires logprobs: true", "top_logprobs")
    params, stream, usage = _common(
        body, model_name, default_max_tokens, (k or 0) if logprobs else None
    )
    return GenerationRequest(
        "chat",
        model_name,
        None,
        None,
        params,
        stream,
        usage,
        tuple(clean),
        tokens_as_ids=_tokens_as_ids(body),
    )


def parse_completion(
    body: Mapping[str, Any], model_name: str, default_max_tokens: int
) -> GenerationRequest:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    text: str | None = None
    ids: tuple[int, ...] | None = None
    if isinstance(prompt, str) and prompt:
        text = prompt
    elif (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    ):
        ids = tuple(prompt)
    elif isinstance(prompt, list) and len(prompt) > 1:
        raise ApiError(400, "one prompt per request (batched prompts are not supported)", "prompt")
    else:
        raise ApiError(400, "prompt is required (a non-empty string or token ids)", "prompt")
    if body.get("echo"):
        raise ApiError(400, "echo is not supported by the reference upstream", "echo")
    k = _integer(body, "logprobs", 0, MAX_TOP_LOGPROBS)
    params, stream, usage = _common(body, model_name, default_max_tokens, k)
    return GenerationRequest(
        "completions",
        model_name,
        text,
        ids,
        params,
        stream,
        usage,
        tokens_as_ids=_tokens_as_ids(body),
    )
