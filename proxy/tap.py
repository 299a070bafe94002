"""The tap: how the shadow path hooks into the request flow without ever blocking it.

The forwarding handler asks the tap for a plan before it forwards a chat/completions request, and hands
it the finished exchange afterwards. Both calls are synchronous and cheap: `plan` decides (sampling,
budget) and `complete` does a non-blocking put on a bounded queue. Everything slow happens in the
shadow workers, off the hot path. Modelled on mitmproxy's addons: the tap observes a flow, it does not own it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """A parsed, read-only view of a client request the proxy is about to forward."""

    route: str  # "chat" (/v1/chat/completions) or "completions" (/v1/completions)
    upstream: str  # configured upstream name it is routed to
    model_name: str  # bounded label value: a configured model name, else "other"
    body: Mapping[str, Any]  # the client's JSON body, parsed; never mutate it
    raw_body: bytes  # the client's body exactly as received
    headers: Mapping[str, str]  # the client's request headers (for replay auth passthrough)
    stream: bool
    # The address it is sent to when the upstream's endpoints come from DNS (proxy/endpoints.py);
    # in the Exchange, the one that served it. None: a static base_url.
    pod: str | None = None


@dataclass(frozen=True, slots=True)
class TapPlan:
    """What the tap wants done with one sampled request. Returned by `Tap.plan`."""

    # Body to send upstream instead of the client's (e.g. logprobs added); None = forward unchanged.
    upstream_body: bytes | None = None
    # Non-streaming: rewrite the whole upstream body before it reaches the client (Content-Length is
    # recomputed). Streaming: rewrite each complete SSE event (its bytes incl. the blank-line terminator).
    # None = bytes are relayed untouched, chunk by chunk.
    rewrite_body: Callable[[bytes], bytes] | None = None
    rewrite_event: Callable[[bytes], bytes] | None = None
    # Opaque to the proxy; handed back in the Exchange.
    token: Any = field(default=None, compare=False)
    # With `upstream_body`: the plan to follow instead when the upstream answers the changed body
    # with an error status (or a body too large to rewrite), while nothing has reached the client:
    # the proxy then resends the client's own body, so a change the upstream refuses never becomes
    # the client's error. None = no second try.
    plain: TapPlan | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Exchange:
    """One finished primary exchange, as the upstream sent it (before any rewrite)."""

    request: RequestInfo
    plan: TapPlan
    status: int  # upstream HTTP status; 0 when no response was received (refused, timeout, ...)
    response_body: bytes | None  # non-streaming: the upstream's full body
    events: tuple[
        Mapping[str, Any], ...
    ]  # streaming: JSON payloads of the SSE data events, in order
    completed: bool  # True when the response was received in full (stream reached [DONE]/EOF)
    started_at: float  # time.monotonic() when the proxy received the request
    finished_at: float  # time.monotonic() when the last byte was relayed
    # The response was larger than the proxy keeps for the shadow path: relayed whole to the
    # client, but `response_body`/`events` were not kept.
    truncated: bool = False


class Tap(Protocol):
    """Extension point for the shadow path. Implementations must never raise or block."""

    def plan(self, request: RequestInfo) -> TapPlan | None:
        """Decide whether to sample this request; None means "not sampled", and nothing else happens."""
        ...

    def complete(self, exchange: Exchange) -> None:
        """Called exactly once for every request `plan` returned a plan for, whatever the outcome
        (success, upstream error, client disconnect)."""
        ...
