"""What the shadow path needs to know of each eligible route, in one place per route.

A `Route` says where replays are sent, how a body asks for logprobs and caps its length, how to
read the token counts of an answer's usage, and how to turn an answer (whole, or its parsed SSE
events) into a `Run`. Three implementations: chat, completions and the Responses API. The byte
surgery on primaries (augmentation, stripping) lives in proxy.shadow.wire (chat, completions) and
proxy.shadow.responses_wire (responses); what a plain answer looks like is learned by the Tap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

from estimator.builders import (
    run_from_chat_response,
    run_from_chat_stream,
    run_from_completion_response,
    run_from_completion_stream,
    run_from_responses_response,
    run_from_responses_stream,
)
from estimator.model import Run
from proxy.shadow import responses_wire, wire


class Route(Protocol):
    """One eligible route's specifics (stateless)."""

    @property
    def name(self) -> str: ...

    @property
    def path(self) -> str:
        """Below the upstream's base URL (…/v1)."""
        ...

    def replay_body(
        self, body: Mapping[str, Any], *, max_tokens: int | None, logprobs_k: int | None
    ) -> bytes: ...

    def output_limit(self, body: Mapping[str, Any]) -> Any:
        """The client's own cap on generated tokens (as sent; not validated)."""
        ...

    def usage(self, answer: Mapping[str, Any]) -> Any:
        """The usage object of a whole answer or of one stream event (None if it has none)."""
        ...

    def token_counts(self, usage: Mapping[str, Any]) -> tuple[Any, Any]:
        """(prompt tokens, generated tokens) as the usage object names them."""
        ...

    def run(self, answer: Mapping[str, Any]) -> Run: ...

    def stream_run(self, events: Sequence[Mapping[str, Any]]) -> Run: ...


@dataclass(frozen=True, slots=True)
class _Chat:
    name: str = "chat"
    path: str = "/chat/completions"

    def replay_body(
        self, body: Mapping[str, Any], *, max_tokens: int | None, logprobs_k: int | None
    ) -> bytes:
        return wire.replay_body(self.name, body, max_tokens=max_tokens, logprobs_k=logprobs_k)

    def output_limit(self, body: Mapping[str, Any]) -> Any:
        return body.get("max_completion_tokens", body.get("max_tokens"))

    def usage(self, answer: Mapping[str, Any]) -> Any:
        return answer.get("usage")

    def token_counts(self, usage: Mapping[str, Any]) -> tuple[Any, Any]:
        return usage.get("prompt_tokens"), usage.get("completion_tokens")

    def run(self, answer: Mapping[str, Any]) -> Run:
        return run_from_chat_response(answer)

    def stream_run(self, events: Sequence[Mapping[str, Any]]) -> Run:
        return run_from_chat_stream(events)


@dataclass(frozen=True, slots=True)
class _Completions(_Chat):
    name: str = "completions"
    path: str = "/completions"

    def run(self, answer: Mapping[str, Any]) -> Run:
        return run_from_completion_response(answer)

    def stream_run(self, events: Sequence[Mapping[str, Any]]) -> Run:
        return run_from_completion_stream(events)


@dataclass(frozen=True, slots=True)
class _Responses:
    name: str = "responses"
    path: str = "/responses"

    def replay_body(
        self, body: Mapping[str, Any], *, max_tokens: int | None, logprobs_k: int | None
    ) -> bytes:
        return responses_wire.replay_body(body, max_tokens=max_tokens, logprobs_k=logprobs_k)

    def output_limit(self, body: Mapping[str, Any]) -> Any:
        return body.get("max_output_tokens")

    def usage(self, answer: Mapping[str, Any]) -> Any:
        if "response" in answer:  # a stream event: response.completed carries the usage
            inner = answer["response"]
            return inner.get("usage") if isinstance(inner, Mapping) else None
        return answer.get("usage")

    def token_counts(self, usage: Mapping[str, Any]) -> tuple[Any, Any]:
        return usage.get("input_tokens"), usage.get("output_tokens")

    def run(self, answer: Mapping[str, Any]) -> Run:
        return run_from_responses_response(answer)

    def stream_run(self, events: Sequence[Mapping[str, Any]]) -> Run:
        return run_from_responses_stream(events)


ROUTES: Mapping[str, Route] = MappingProxyType(
    {r.name: r for r in (_Chat(), _Completions(), _Responses())}
)


def route(name: str) -> Route:
    """The route of an eligible request; KeyError for any other."""
    return ROUTES[name]
