"""Response bodies in vLLM's shapes: full responses, SSE chunks, logprobs, usage."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from reference.engine import TokenEvent, TokenInfo


@dataclass(frozen=True)
class Envelope:
    """What every body of one response shares."""

    kind: str  # "chat" | "completions"
    id: str
    created: int
    model: str
    tokens_as_ids: bool = False  # logprobs name tokens "token_id:N" (vLLM's option)
    system_fingerprint: str | None = None  # reference.fingerprint; stamped where vLLM does

    def stamp(self, body: dict[str, Any]) -> dict[str, Any]:
        """`body` with the fingerprint: full responses and the terminal chunks, as vLLM."""
        if self.system_fingerprint is not None:
            body["system_fingerprint"] = self.system_fingerprint
        return body

    def head(self, chunk: bool) -> dict[str, Any]:
        if self.kind == "chat":
            obj = "chat.completion.chunk" if chunk else "chat.completion"
        else:
            obj = "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _name(token: TokenInfo, as_ids: bool) -> str:
    return f"token_id:{token.token_id}" if as_ids else token.text


def _bytes(token: TokenInfo, as_ids: bool) -> list[int]:
    """A token's bytes: its own (as OpenAI reports them), or those of its id name (as vLLM)."""
    return list(_name(token, True).encode()) if as_ids else list(token.raw)


def chat_logprobs(events: Sequence[TokenEvent], as_ids: bool = False) -> dict[str, Any]:
    content = []
    for ev in events:
        if ev.token is None:
            continue
        content.append(
            {
                "token": _name(ev.token, as_ids),
                "logprob": ev.logprob,
                "bytes": _bytes(ev.token, as_ids),
                "top_logprobs": [
                    {"token": _name(t, as_ids), "logprob": lp, "bytes": _bytes(t, as_ids)}
                    for t, lp in ev.top
                ],
            }
        )
    return {"content": content}


def completion_logprobs(
    events: Sequence[TokenEvent], offset: int, as_ids: bool = False
) -> dict[str, Any]:
    """Legacy shape: alternatives in an object keyed by token text, so tokens whose text is the
    same (pieces of one multi-byte character) are merged into one entry, as vLLM does."""
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top: list[dict[str, float]] = []
    offsets: list[int] = []
    for ev in events:
        if ev.token is None:
            continue
        name = _name(ev.token, as_ids)
        tokens.append(name)
        token_logprobs.append(ev.logprob)
        entry = {_name(t, as_ids): lp for t, lp in ev.top}
        if ev.logprob is not None:
            entry.setdefault(name, ev.logprob)
        top.append(entry)
        offsets.append(offset)
        offset += len(ev.token.text)
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top,
        "text_offset": offsets,
    }


def full_response(
    env: Envelope,
    events: Sequence[TokenEvent],
    with_logprobs: bool,
    prompt_tokens: int,
) -> dict[str, Any]:
    text = "".join(ev.text for ev in events)
    finish = events[-1].finish_reason if events else "stop"
    n_tokens = sum(1 for ev in events if ev.token is not None)
    choice: dict[str, Any]
    if env.kind == "chat":
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text, "tool_calls": []},
            "logprobs": chat_logprobs(events, env.tokens_as_ids) if with_logprobs else None,
            "finish_reason": finish,
            "stop_reason": None,
        }
    else:
        choice = {
            "index": 0,
            "text": text,
            "logprobs": (
                completion_logprobs(events, 0, env.tokens_as_ids) if with_logprobs else None
            ),
            "finish_reason": finish,
            "stop_reason": None,
        }
    return env.stamp(
        {**env.head(False), "choices": [choice], "usage": usage(prompt_tokens, n_tokens)}
    )


def first_chat_chunk(env: Envelope, include_usage: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        **env.head(True),
        "choices": [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
        ],
    }
    if include_usage:
        body["usage"] = None
    return body


def token_chunk(
    env: Envelope, event: TokenEvent, with_logprobs: bool, text_offset: int, include_usage: bool
) -> dict[str, Any]:
    """One SSE chunk per generated token, carrying that token's logprobs."""
    choice: dict[str, Any] = {"index": 0}
    if env.kind == "chat":
        choice["delta"] = {"content": event.text} if event.text or not event.finish_reason else {}
        choice["logprobs"] = chat_logprobs([event], env.tokens_as_ids) if with_logprobs else None
    else:
        choice["text"] = event.text
        choice["logprobs"] = (
            completion_logprobs([event], text_offset, env.tokens_as_ids) if with_logprobs else None
        )
    choice["finish_reason"] = event.finish_reason
    if event.finish_reason is not None:
        choice["stop_reason"] = None
    body: dict[str, Any] = {**env.head(True), "choices": [choice]}
    if include_usage:
        body["usage"] = None
    elif event.finish_reason is not None:  # with usage, the usage chunk is the terminal one
        env.stamp(body)
    return body


def usage_chunk(env: Envelope, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return env.stamp(
        {**env.head(True), "choices": [], "usage": usage(prompt_tokens, completion_tokens)}
    )
