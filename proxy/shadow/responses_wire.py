"""Request and response surgery for the Responses API (`POST /v1/responses`): logprob
augmentation, what a plain answer looks like, and byte-exact stripping of what was added.

Asking the Responses API for logprobs changes more than one key, and in more places than chat:

- every `output_text` content part carries `logprobs`: `null` in a plain vLLM body, a list when
  asked; streamed, the same part is `[]` in `response.content_part.added` and in every
  `response.output_text.delta` / `.done`, `null` in `response.content_part.done`,
  `response.output_item.done` and `response.completed` (vLLM 0.32; other upstreams send `[]`
  throughout, or no key at all);
- the response object echoes `top_logprobs` (vLLM: `null` unless logprobs were asked, then `k`).

So the plain value is learned per location from a plain primary of the same shape, keyed by the
event type for streams (`PlainForm`), and restored at those locations only. Locations are found
by walking the JSON structure (`output[].content[].logprobs`, `part.logprobs`, `item.content[]
.logprobs`, `response.output[]...`, the delta's own `logprobs`, and the response's
`top_logprobs`): a key named `logprobs` elsewhere, say in an echoed JSON schema or tool
definition, is never touched. Every other byte is the upstream's own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.shadow.wire import _value_end

INCLUDE_LOGPROBS = "message.output_text.logprobs"

# Where logprobs (and the top_logprobs echo) live in a Responses body or stream event: a nested
# dict is an object's keys, a one-element list an array's elements, a str a target's location.
_Tree = Mapping[str, Any] | list[Any] | str
_PARTS: list[Any] = [{"logprobs": "content"}]
_TREE: Mapping[str, Any] = {
    "top_logprobs": "echo",  # the response body's echo
    "output": [{"content": _PARTS}],  # the response body's parts
    "logprobs": "event",  # response.output_text.delta / .done
    "part": {"logprobs": "part"},  # response.content_part.added / .done
    "item": {"content": _PARTS},  # response.output_item.added / .done
    "response": {"top_logprobs": "echo", "output": [{"content": _PARTS}]},  # created ... completed
}
_SPACE = b" \t\r\n"
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_ABSENT = None  # learned: the plain answer has no such key there


@dataclass(frozen=True, slots=True)
class _Span:
    sep: int  # index of the `{` or `,` before the key
    start: int  # the value's first byte
    end: int  # just past the value
    where: str


def _skip(data: bytes, i: int) -> int:
    while i < len(data) and data[i] in _SPACE:
        i += 1
    return i


class _Walk:
    """One pass over a JSON value: the spans of the targets in _TREE, the locations that had an
    object where a target could be but no such key (`missing`), and the root's `type`."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.spans: list[_Span] = []
        self.missing: set[str] = set()
        self.type: str | None = None

    def value(self, i: int, tree: _Tree | None, root: bool = False) -> int:
        data = self.data
        first = data[i : i + 1]
        if first == b"{" and isinstance(tree, Mapping):
            return self._object(i, tree, root)
        if first == b"[" and isinstance(tree, list):
            return self._array(i, tree[0])
        return _value_end(data, i)

    def _object(self, i: int, tree: Mapping[str, Any], root: bool) -> int:
        data = self.data
        sep, i = i, _skip(data, i + 1)
        seen: set[str] = set()
        if data[i : i + 1] != b"}":
            while True:
                key = _STRING.match(data, i)
                if key is None:
                    raise ValueError("expected a key")
                name = key.group()[1:-1].decode("utf-8", "replace")
                i = _skip(data, key.end())
                if data[i : i + 1] != b":":
                    raise ValueError("expected ':'")
                i = _skip(data, i + 1)
                sub = tree.get(name)
                if isinstance(sub, str):
                    end = _value_end(data, i)
                    self.spans.append(_Span(sep, i, end, sub))
                    seen.add(name)
                elif root and name == "type" and data[i : i + 1] == b'"':
                    end = _value_end(data, i)
                    kind = orjson.loads(data[i:end])
                    self.type = kind if isinstance(kind, str) else None
                else:
                    end = self.value(i, sub)
                i = _skip(data, end)
                if data[i : i + 1] == b",":
                    sep, i = i, _skip(data, i + 1)
                    continue
                if data[i : i + 1] != b"}":
                    raise ValueError("expected ',' or '}'")
                break
        for name, sub in tree.items():
            if isinstance(sub, str) and name not in seen and not root:
                self.missing.add(sub)
        return i + 1

    def _array(self, i: int, tree: _Tree) -> int:
        data = self.data
        i = _skip(data, i + 1)
        if data[i : i + 1] == b"]":
            return i + 1
        while True:
            i = _skip(data, self.value(i, tree))
            if data[i : i + 1] == b",":
                i = _skip(data, i + 1)
                continue
            if data[i : i + 1] != b"]":
                raise ValueError("expected ',' or ']'")
            return i + 1


def _json_start(event: bytes) -> int:
    """Where the JSON of an SSE event's data line starts (-1: no JSON object)."""
    at = event.find(b"data:")
    return -1 if at < 0 else event.find(b"{", at)


# -- what a plain answer looks like -------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PlainForm:
    """The bytes a plain (not augmented) answer of one shape has at each location, per event
    type (None for a whole body); a value of None: that answer has no such key there."""

    values: Mapping[tuple[str | None, str], bytes | None]

    def value(self, kind: str | None, where: str) -> bytes | None:
        """The plain bytes at a location; an event type never seen plain takes what another
        type had at the same location (None when nothing is known: the key is dropped)."""
        if (kind, where) in self.values:
            return self.values[(kind, where)]
        for (_, other), value in sorted(self.values.items(), key=lambda kv: str(kv[0])):
            if other == where and value is not None:
                return value
        return None


def _plain_value(value: bytes | None) -> bool:
    """A plain answer's logprobs are empty: null, [] or absent. Anything else, and the shape is
    not one the proxy can restore (it is never augmented)."""
    return value is None or value.replace(b" ", b"") in (b"null", b"[]")


def _merge(values: dict[tuple[str | None, str], bytes | None], key: Any, value: Any) -> None:
    if value is not None or key not in values:  # a key present somewhere wins over absent
        values[key] = value


def form_of_body(body: bytes) -> PlainForm | None:
    """What a plain non-streaming answer shows; None when it shows no output_text part."""
    walk = _Walk(body)
    start = _skip(body, 0)
    walk.value(start, _TREE, root=True)
    values: dict[tuple[str | None, str], bytes | None] = {}
    for span in walk.spans:
        value = body[span.start : span.end]
        if span.where != "echo" and not _plain_value(value):
            return None
        _merge(values, (None, span.where), value)
    for where in walk.missing:
        _merge(values, (None, where), _ABSENT)
    if ("echo" not in {w for _, w in values}) and start < len(body):
        values[(None, "echo")] = _ABSENT
    return PlainForm(values) if (None, "content") in values else None


def _mapping_walk(
    obj: Any, tree: _Tree, found: list[tuple[str, Any]], missing: set[str], root: bool
) -> None:
    if isinstance(tree, Mapping) and isinstance(obj, Mapping):
        for name, sub in tree.items():
            if name not in obj:
                if isinstance(sub, str) and not root:
                    missing.add(sub)
            elif isinstance(sub, str):
                found.append((sub, obj[name]))
            else:
                _mapping_walk(obj[name], sub, found, missing, False)
    elif isinstance(tree, list) and isinstance(obj, list):
        for element in obj:
            _mapping_walk(element, tree[0], found, missing, False)


def form_of_events(events: tuple[Mapping[str, Any], ...]) -> PlainForm | None:
    """What a plain stream shows (its parsed events: the raw bytes are not kept; values are
    rendered compact, as vLLM and OpenAI send them); None without an output_text delta."""
    values: dict[tuple[str | None, str], bytes | None] = {}
    for event in events:
        kind = event.get("type")
        kind = kind if isinstance(kind, str) else None
        found: list[tuple[str, Any]] = []
        missing: set[str] = set()
        _mapping_walk(event, _TREE, found, missing, True)
        if kind == "response.output_text.delta" and "logprobs" not in event:
            missing.add("event")
        for where, value in found:
            rendered = orjson.dumps(value)
            if where != "echo" and not _plain_value(rendered):
                return None
            _merge(values, (kind, where), rendered)
        for where in missing:
            _merge(values, (kind, where), _ABSENT)
    return PlainForm(values) if ("response.output_text.delta", "event") in values else None


# -- restoring it -------------------------------------------------------------------------------
def _cut(data: bytes, span: _Span, value: bytes | None) -> tuple[int, int, bytes]:
    if value is not None:
        return span.start, span.end, value
    if data[span.sep : span.sep + 1] == b",":
        return span.sep, span.end, b""  # `, "logprobs": v` goes
    end = _skip(data, span.end)  # keep `{`; `"logprobs": v,` goes
    if data[end : end + 1] == b",":
        end = _skip(data, end + 1)
    return span.sep + 1, end, b""


def restore(data: bytes, form: PlainForm, event: bool) -> bytes:
    """`data` (a whole body, or one SSE event's bytes) with every logprobs location set back to
    what a plain answer has there."""
    start = _json_start(data) if event else _skip(data, 0)
    if start < 0 or start >= len(data):
        return data
    walk = _Walk(data)
    walk.value(start, _TREE, root=True)
    if not walk.spans:
        return data
    kind = walk.type if event else None
    out: list[bytes] = []
    pos = 0
    for span in walk.spans:
        cut_start, cut_end, replacement = _cut(data, span, form.value(kind, span.where))
        out += (data[pos:cut_start], replacement)
        pos = cut_end
    out.append(data[pos:])
    return b"".join(out)


# -- the request --------------------------------------------------------------------------------
def client_wants_logprobs(body: Mapping[str, Any]) -> bool:
    include = body.get("include")
    return isinstance(include, list) and INCLUDE_LOGPROBS in include


def echo_key(body: Mapping[str, Any]) -> bytes:
    """What the response's `top_logprobs` echo of a plain answer may depend on: the client's own
    `top_logprobs` (vLLM echoes null unless logprobs are included; OpenAI echoes the request)."""
    return orjson.dumps(body.get("top_logprobs"))


def with_logprobs(body: Mapping[str, Any], top_k: int) -> dict[str, Any]:
    """A copy asking for the output text's logprobs with top-k alternatives; the client's own
    `include` entries are kept."""
    new = dict(body)
    include = body.get("include")
    entries = list(include) if isinstance(include, list) else []
    if INCLUDE_LOGPROBS not in entries:
        entries.append(INCLUDE_LOGPROBS)
    new["include"] = entries
    new["top_logprobs"] = top_k
    return new


def replay_body(
    body: Mapping[str, Any], *, max_tokens: int | None, logprobs_k: int | None
) -> bytes:
    """The replay: same input and decoding, non-streaming, in the foreground, not stored (a
    replay must not add to the client's stored responses), capped at the primary's length."""
    if client_wants_logprobs(body):
        logprobs_k = None  # the client's own logprobs, as its primary has them (wire.replay_body)
    new = with_logprobs(body, logprobs_k) if logprobs_k else dict(body)
    new["stream"] = False
    new.pop("stream_options", None)
    new["background"] = False
    new["store"] = False
    if max_tokens is not None:
        new["max_output_tokens"] = max_tokens
    return orjson.dumps(new)
