"""Request classes: what kind of request a sampled primary was, so T_bg can be read per kind.

A class is route (`chat` / `completions` / `responses`) × kind (`tools`: the request offers tools
or functions; `json`: it asks for a JSON response_format, or a JSON `text.format` on /v1/responses;
`plain`: neither) × streaming (`whole` / `stream`).
Tool calls and constrained JSON decoding take other paths through an inference server (guided
decoding, other batch shapes) than plain text, so their nondeterminism may differ.

Two more dimensions: the decoding (`greedy`, or `seeded`: temperature > 0 with a seed, measured
apart from T_bg, proxy.shadow.seeded) and the prompt's length (`short` < 256 prompt tokens <=
`medium` < 2048 <= `long`), from the primary's usage, or, when the upstream sent none, from the
client's body size at 4 bytes a token (< 1 KiB, < 8 KiB: the body holds the whole prompt, tool
definitions included, plus a little JSON). Long prompts meet chunked prefill and other batch
shapes, so their nondeterminism may differ too.

The Tap decides the class once per sampled primary, from the body it already parsed (a few dict
lookups; unsampled requests never get one), and the Worker refines the prompt length from the
primary's usage. The set is fixed and small: 3 routes × 3 kinds × 2 streaming × 3 prompt lengths
× 2 decodings = 108 classes at most per (upstream, model_name), greedy ones in the T_bg estimators
by class, seeded ones in the seeded report's; only classes that had a comparison exist, and none
is a Prometheus label.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

ROUTES: tuple[str, ...] = ("chat", "completions", "responses")
KINDS: tuple[str, ...] = ("plain", "tools", "json")
STREAMING: tuple[str, ...] = ("whole", "stream")
JSON_FORMATS = frozenset({"json_object", "json_schema"})
DECODINGS: tuple[str, ...] = ("greedy", "seeded")
PROMPTS: tuple[str, ...] = ("short", "medium", "long")
PROMPT_TOKEN_EDGES: tuple[int, int] = (256, 2048)  # short < 256 <= medium < 2048 <= long
BYTES_PER_TOKEN = 4  # without usage: the client's body size stands for the prompt's


@dataclass(frozen=True, slots=True)
class RequestClass:
    """One of the request classes (picklable: it crosses to the shadow worker process)."""

    route: str  # ROUTES
    kind: str  # KINDS
    streaming: str  # STREAMING
    decoding: str = "greedy"  # DECODINGS
    prompt: str = "short"  # PROMPTS

    @property
    def label(self) -> str:
        return f"{self.route}/{self.kind}/{self.streaming}"

    def order(self) -> tuple[int, ...]:
        """Sort key: decodings, prompt lengths, routes, kinds and streaming in the order of their
        tuples above."""
        return (DECODINGS.index(self.decoding), PROMPTS.index(self.prompt),
                ROUTES.index(self.route), KINDS.index(self.kind),
                STREAMING.index(self.streaming))  # fmt: skip

    def to_json(self) -> dict[str, str]:
        return {"route": self.route, "kind": self.kind, "streaming": self.streaming,
                "decoding": self.decoding, "prompt": self.prompt}  # fmt: skip


def _offered(value: Any) -> bool:
    return isinstance(value, list | tuple | Mapping) and len(value) > 0


def request_kind(body: Mapping[str, Any]) -> str:
    """`tools` when tools or functions are offered (they decide what is decoded, whatever the
    response_format), else `json` for a json_object / json_schema response_format, else `plain`."""
    if _offered(body.get("tools")) or _offered(body.get("functions")):
        return "tools"
    fmt = body.get("response_format")
    if isinstance(fmt, Mapping) and fmt.get("type") in JSON_FORMATS:
        return "json"
    text = body.get("text")  # the Responses API: text.format
    fmt = text.get("format") if isinstance(text, Mapping) else None
    if isinstance(fmt, Mapping) and fmt.get("type") in JSON_FORMATS:
        return "json"
    return "plain"


def prompt_bucket(prompt_tokens: int | None, body_bytes: int = 0) -> str:
    """`short`, `medium` or `long`: by the primary's prompt tokens, else by the body's size."""
    tokens = body_bytes // BYTES_PER_TOKEN if prompt_tokens is None else prompt_tokens
    if tokens < PROMPT_TOKEN_EDGES[0]:
        return "short"
    return "medium" if tokens < PROMPT_TOKEN_EDGES[1] else "long"


def classify(
    route: str,
    body: Mapping[str, Any],
    stream: bool,
    decoding: str = "greedy",
    body_bytes: int = 0,
) -> RequestClass:
    """The class of an eligible request (route is one of ROUTES: the only eligible ones); its
    prompt length by the body's size until the Worker reads the primary's usage."""
    if route not in ROUTES:
        raise ValueError(f"no request class for route {route!r}")
    if decoding not in DECODINGS:
        raise ValueError(f"no request class for decoding {decoding!r}")
    return RequestClass(route, request_kind(body), "stream" if stream else "whole", decoding,
                        prompt_bucket(None, body_bytes))  # fmt: skip


def with_prompt_tokens(request_class: RequestClass | None, prompt_tokens: int | None) -> (
    RequestClass | None
):  # fmt: skip
    """The class with its prompt length from the primary's usage, when the upstream sent one."""
    if request_class is None or prompt_tokens is None:
        return request_class
    bucket = prompt_bucket(prompt_tokens)
    if bucket == request_class.prompt:
        return request_class
    return replace(request_class, prompt=bucket)
