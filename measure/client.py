"""One temperature-0 (or reference-temperature) chat completion through the openai SDK.

Logprobs with top-k alternatives are requested; an endpoint that rejects them (HTTP 400 naming
logprobs) or answers without them switches the session to text-only once, with a note, and the
report then carries only the model-free statistics (science.md §3d).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from estimator.builders import BuildError, run_from_chat_response
from measure.prompts import Prompt
from measure.store import Key, Record

if TYPE_CHECKING:
    from openai import AsyncOpenAI


class RequestFailed(RuntimeError):
    """A request failed in a way that retrying later may fix (counted, not recorded)."""


@dataclass
class Capabilities:
    """What the endpoint turned out to support; shared by the requests of one session."""

    top_logprobs: int | None  # None: do not request logprobs
    notes: list[str] = field(default_factory=list)

    def disable_logprobs(self, why: str) -> None:
        if self.top_logprobs is not None:
            self.top_logprobs = None
            self.notes.append(f"logprobs unavailable ({why}): text-only statistics")


@dataclass(frozen=True)
class Endpoint:
    client: AsyncOpenAI
    model: str
    max_tokens: int
    caps: Capabilities
    session: str


def make_client(base_url: str, api_key: str, timeout: float) -> AsyncOpenAI:
    from openai import AsyncOpenAI

    return AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=2, timeout=timeout)


async def _create(ep: Endpoint, prompt: Prompt, temperature: float) -> Any:
    from openai import BadRequestError

    kwargs: dict[str, Any] = {
        "model": ep.model,
        "messages": prompt.as_messages(),
        "temperature": temperature,
        "max_tokens": ep.max_tokens,
    }
    kwargs.update(prompt.request_options())  # tools, tool_choice, response_format
    k = ep.caps.top_logprobs
    if k is not None:
        kwargs.update(logprobs=True, top_logprobs=k)
    try:
        return await ep.client.chat.completions.create(**kwargs)
    except BadRequestError as exc:
        if k is None or "logprob" not in str(exc).lower():
            raise
        ep.caps.disable_logprobs(f"the endpoint refused them: HTTP {exc.status_code}")
        kwargs.pop("logprobs"), kwargs.pop("top_logprobs")
        return await ep.client.chat.completions.create(**kwargs)


async def one_run(ep: Endpoint, prompt: Prompt, key: Key) -> Record:
    """Send one request; the returned record is what `Store.append` writes."""
    import openai

    started, t0 = time.time(), time.monotonic()
    try:
        resp = await _create(ep, prompt, key.temperature)
    except (openai.APIConnectionError, openai.APITimeoutError, openai.InternalServerError) as exc:
        raise RequestFailed(f"{type(exc).__name__}: {exc}") from exc
    except openai.RateLimitError as exc:
        raise RequestFailed(f"rate limited: {exc}") from exc
    latency = time.monotonic() - t0
    body = resp.model_dump()
    try:
        run = run_from_chat_response(body)
    except BuildError as exc:
        raise RequestFailed(f"unexpected response shape: {exc}") from exc
    if ep.caps.top_logprobs is not None and run.logprobs is None:
        ep.caps.disable_logprobs("the endpoint answered without them")
    usage = body.get("usage") or {}
    n = usage.get("completion_tokens")
    return Record(
        key,
        run.tokens,
        run.logprobs,
        run.top_logprobs if run.has_top_logprobs else None,
        run.text,
        run.finish_reason,
        int(n) if isinstance(n, int) else len(run.tokens),
        latency,
        started,
        ep.session,
        run.token_collisions,
        tuple((c.name, c.arguments) for c in run.tool_calls),
    )
