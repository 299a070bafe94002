"""Request classes: what kind of request a sampled primary was, so T_bg can be read per kind.

A class is route (`chat` / `completions` / `responses`) × kind (`tools`: the request offers tools
or functions; `json`: it asks for a JSON response_format, or a JSON `text.format` on /v1/responses;
`plain`: neither) × streaming (`whole` / `stream`).
Tool calls and constrained JSON decoding take other paths through an inference server (guided
decoding, other batch shapes) than plain text, so their nondeterminism may differ.

The Tap decides the class once per sampled primary, from the body it already parsed (a few dict
lookups; unsampled requests never get one). The set is fixed and small, 3 × 3 × 2 = 18 classes at
most, which bounds the per-class estimators the Aggregator keeps per (upstream, model_name).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ROUTES: tuple[str, ...] = ("chat", "completions", "responses")
KINDS: tuple[str, ...] = ("plain", "tools", "json")
STREAMING: tuple[str, ...] = ("whole", "stream")
JSON_FORMATS = frozenset({"json_object", "json_schema"})


@dataclass(frozen=True, slots=True)
class RequestClass:
    """One of the 18 request classes (picklable: it crosses to the shadow worker process)."""

    route: str  # ROUTES
    kind: str  # KINDS
    streaming: str  # STREAMING

    @property
    def label(self) -> str:
        return f"{self.route}/{self.kind}/{self.streaming}"

    def order(self) -> tuple[int, int, int]:
        """Sort key: routes, kinds and streaming in the order of their tuples above."""
        return (ROUTES.index(self.route), KINDS.index(self.kind), STREAMING.index(self.streaming))

    def to_json(self) -> dict[str, str]:
        return {"route": self.route, "kind": self.kind, "streaming": self.streaming}


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


def classify(route: str, body: Mapping[str, Any], stream: bool) -> RequestClass:
    """The class of an eligible request (route is one of ROUTES: the only eligible ones)."""
    if route not in ROUTES:
        raise ValueError(f"no request class for route {route!r}")
    return RequestClass(route, request_kind(body), "stream" if stream else "whole")
