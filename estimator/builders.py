"""Build a `Run` from OpenAI chat/completions response bodies and collected stream chunks.

Choice index 0 is used. Tokens become keys that tell distinct tokens apart (`estimator.tokens`):
from the ``bytes`` the upstream reports where the text is a replacement character, else from the
token strings, with strings that still collide resolved by the chosen token's logprob and
counted in `Run.token_collisions`. When the body carries no logprobs the run is text-only: its
tokens are the text split into whitespace-led words (``re.findall(r"\\s*\\S+|\\s+", text)``, so that
``"".join(tokens) == text``); the model-free statistics and the `hazard` estimator still work on
those, the `likelihood` and `jitter` estimators do not.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from estimator.model import Run, ToolCall, TopLogprobs
from estimator.tokens import BYTES_MARK, REPLACEMENT, entry_key, resolve_collisions

_WORDS = re.compile(r"\s*\S+|\s+")


class BuildError(ValueError):
    """A response body or stream chunk does not have the OpenAI shape we need."""


def text_tokens(text: str) -> tuple[str, ...]:
    """The text-only fallback tokenisation: whitespace-led words; joins back to ``text``."""
    return tuple(_WORDS.findall(text))


def _float(x: Any, where: str) -> float:
    if x is None:
        return math.nan
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise BuildError(f"{where}: logprob is not a number: {x!r}")
    return float(x)


def _mapping(x: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(x, Mapping):
        raise BuildError(f"{where}: expected an object, got {type(x).__name__}")
    return x


def _choice0(body: Any, where: str) -> Mapping[str, Any] | None:
    """Choice with index 0 (or the first one); None when ``choices`` is empty (usage chunks)."""
    body = _mapping(body, where)
    choices = body.get("choices")
    if not isinstance(choices, list):
        raise BuildError(f"{where}: 'choices' is missing or not a list")
    for c in choices:
        m = _mapping(c, where)
        if m.get("index", 0) == 0:
            return m
    return None


def _sorted_top(pairs: list[tuple[str, float]]) -> TopLogprobs:
    # Most likely first; stable so equal logprobs keep the upstream's order.
    return tuple(sorted(pairs, key=lambda p: -p[1]))


class _Acc:
    """Accumulates tokens/logprobs/text over a body or a sequence of chunks."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.tokens: list[str] = []
        self.lps: list[float] = []
        self.tops: list[TopLogprobs] = []
        self.saw_logprobs = False
        self.finish: str | None = None
        self.collisions = 0
        self.calls: dict[int, tuple[list[str], list[str]]] = {}  # index -> (name, arguments)

    def _position(self, tok: str, lp: float, pairs: list[tuple[str, float]]) -> None:
        """One position: the chosen token's key, its logprob, its alternatives with distinct keys."""
        top = _sorted_top(pairs)
        have = dict(top)
        x = have.get(tok)
        if len(have) != len(top) or (x is not None and x != lp):  # else nothing can collide
            top, hit = resolve_collisions(tok, lp, top)
            self.collisions += hit
        self.tokens.append(tok)
        self.lps.append(lp)
        self.tops.append(top)

    def chat_logprobs(self, lp: Any, where: str) -> None:
        if lp is None:
            return
        content = _mapping(lp, where).get("content")
        if content is None:
            return
        if not isinstance(content, list):
            raise BuildError(f"{where}: logprobs.content is not a list")
        self.saw_logprobs = True
        for item in content:
            item = _mapping(item, where)
            tok = item.get("token")
            if not isinstance(tok, str):
                raise BuildError(f"{where}: logprobs token is not a string: {tok!r}")
            top = item.get("top_logprobs") or []
            if not isinstance(top, list):
                raise BuildError(f"{where}: top_logprobs is not a list")
            pairs = []
            for t in top:
                t = _mapping(t, where)
                name = t.get("token")
                if not isinstance(name, str):
                    raise BuildError(f"{where}: top_logprobs token is not a string")
                if REPLACEMENT in name or BYTES_MARK in name:  # not the token's own text
                    name = entry_key(name, t.get("bytes"))
                pairs.append((name, _float(t.get("logprob"), where)))
            if REPLACEMENT in tok or BYTES_MARK in tok:
                tok = entry_key(tok, item.get("bytes"))
            self._position(tok, _float(item.get("logprob"), where), pairs)

    def completion_logprobs(self, lp: Any, where: str) -> None:
        if lp is None:
            return
        lp = _mapping(lp, where)
        toks = lp.get("tokens")
        if toks is None:
            return
        vals = lp.get("token_logprobs") or [None] * len(toks)
        tops = lp.get("top_logprobs") or [None] * len(toks)
        if not (isinstance(toks, list) and isinstance(vals, list) and isinstance(tops, list)):
            raise BuildError(f"{where}: logprobs.tokens/token_logprobs/top_logprobs not lists")
        if not len(toks) == len(vals) == len(tops):
            raise BuildError(f"{where}: logprobs arrays have different lengths")
        self.saw_logprobs = True
        for tok, v, top in zip(toks, vals, tops, strict=True):
            if not isinstance(tok, str):
                raise BuildError(f"{where}: logprobs token is not a string: {tok!r}")
            if top is None:
                self.tokens.append(tok)
                self.lps.append(_float(v, where))
                self.tops.append(())
            else:
                # Alternatives keyed by text in an object: strings that collide have been merged
                # into one entry already; the chosen token's own logprob tells (tokens.py).
                top = _mapping(top, where)
                pairs = [(str(k), _float(x, where)) for k, x in top.items()]
                self._position(tok, _float(v, where), pairs)

    def finish_reason(self, choice: Mapping[str, Any]) -> None:
        fr = choice.get("finish_reason")
        if fr is not None:
            self.finish = str(fr)

    def tool_call_deltas(self, calls: Any, where: str) -> None:
        """A message's `tool_calls` (whole) or a stream delta's (pieces keyed by `index`): the
        name arrives once, the arguments' text in pieces, concatenated in order."""
        if calls is None:
            return
        if not isinstance(calls, list):
            raise BuildError(f"{where}: tool_calls is not a list")
        for pos, call in enumerate(calls):
            call = _mapping(call, where)
            index = call.get("index", pos)
            if not isinstance(index, int) or isinstance(index, bool):
                raise BuildError(f"{where}: tool call index is not an integer")
            fn = call.get("function")
            fn = _mapping(fn, where) if fn is not None else {}
            name, args = self.calls.setdefault(index, ([], []))
            if fn.get("name"):
                name.append(_text(fn.get("name"), where))
            if fn.get("arguments"):
                args.append(_text(fn.get("arguments"), where))

    def run(self) -> Run:
        text = "".join(self.text)
        calls = tuple(
            ToolCall("".join(name), "".join(args)) for _, (name, args) in sorted(self.calls.items())
        )
        if not self.saw_logprobs:
            return Run(text_tokens(text), None, None, text, self.finish, tool_calls=calls)
        tops = tuple(self.tops) if any(self.tops) else None
        hits = self.collisions if tops is not None else 0
        return Run(tuple(self.tokens), tuple(self.lps), tops, text, self.finish, hits, calls)


def _text(x: Any, where: str) -> str:
    if x is None:
        return ""
    if not isinstance(x, str):
        raise BuildError(f"{where}: content is not a string")
    return x


def run_from_chat_response(body: Mapping[str, Any]) -> Run:
    """A non-streaming ``/v1/chat/completions`` response body."""
    c = _choice0(body, "chat response")
    if c is None:
        raise BuildError("chat response: no choice with index 0")
    acc = _Acc()
    msg = _mapping(c.get("message"), "chat response message")
    acc.text.append(_text(msg.get("content"), "chat response"))
    acc.tool_call_deltas(msg.get("tool_calls"), "chat response")
    acc.chat_logprobs(c.get("logprobs"), "chat response")
    acc.finish_reason(c)
    return acc.run()


def run_from_completion_response(body: Mapping[str, Any]) -> Run:
    """A non-streaming ``/v1/completions`` response body."""
    c = _choice0(body, "completion response")
    if c is None:
        raise BuildError("completion response: no choice with index 0")
    acc = _Acc()
    acc.text.append(_text(c.get("text"), "completion response"))
    acc.completion_logprobs(c.get("logprobs"), "completion response")
    acc.finish_reason(c)
    return acc.run()


def run_from_chat_stream(chunks: Sequence[Mapping[str, Any]]) -> Run:
    """Parsed JSON of the SSE data events of a streamed chat completion (``[DONE]`` excluded)."""
    acc = _Acc()
    for i, ch in enumerate(chunks):
        where = f"chat chunk {i}"
        c = _choice0(ch, where)
        if c is None:
            continue  # usage-only chunk
        delta = c.get("delta") or {}
        delta = _mapping(delta, where)
        acc.text.append(_text(delta.get("content"), where))
        acc.tool_call_deltas(delta.get("tool_calls"), where)
        acc.chat_logprobs(c.get("logprobs"), where)
        acc.finish_reason(c)
    return acc.run()


def run_from_completion_stream(chunks: Sequence[Mapping[str, Any]]) -> Run:
    """Parsed JSON of the SSE data events of a streamed completion (``[DONE]`` excluded)."""
    acc = _Acc()
    for i, ch in enumerate(chunks):
        where = f"completion chunk {i}"
        c = _choice0(ch, where)
        if c is None:
            continue
        acc.text.append(_text(c.get("text"), where))
        acc.completion_logprobs(c.get("logprobs"), where)
        acc.finish_reason(c)
    return acc.run()


# -- the Responses API (/v1/responses) -------------------------------------------------------------
# The compared answer is the response's output items in order: the text of its `message` items'
# `output_text` (and `refusal`) parts, and its `function_call` items as tool calls. A `reasoning`
# item's own text (`reasoning_text` parts, as vLLM returns them) is part of the answer too, ahead
# of the message, joined by a blank line: it is decoded greedily like the rest, and a fork there
# changes everything after it. Summaries and encrypted reasoning are not (a summary is written
# afterwards, by other means). Logprobs are reported for the message text only, so a run with
# reasoning text is compared by its text (model-free statistics), never by its logprobs.
_REASONING_JOIN = "\n\n"


def _responses_finish(body: Mapping[str, Any], where: str) -> str:
    status = body.get("status")
    if status == "completed":
        return "stop"
    if status == "incomplete":
        details = body.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, Mapping) else None
        return "length" if reason in (None, "max_output_tokens") else str(reason)
    raise BuildError(f"{where}: response status is {status!r}, not a finished answer")


def _responses_run(body: Any, where: str) -> tuple[Run, bool]:
    """The run of a Responses object, and whether it had reasoning text."""
    body = _mapping(body, where)
    output = body.get("output")
    if not isinstance(output, list):
        raise BuildError(f"{where}: 'output' is missing or not a list")
    finish = _responses_finish(body, where)
    acc = _Acc()
    reasoning: list[str] = []
    for item in output:
        item = _mapping(item, where)
        kind = item.get("type")
        if kind == "message":
            parts = item.get("content") or []
            if not isinstance(parts, list):
                raise BuildError(f"{where}: message content is not a list")
            for part in parts:
                part = _mapping(part, where)
                if part.get("type") == "output_text":
                    text = _text(part.get("text"), where)
                    acc.text.append(text)
                    lp = part.get("logprobs")
                    if isinstance(lp, list) and (lp or not text):  # plain streams send []
                        acc.chat_logprobs({"content": lp}, where)
                elif part.get("type") == "refusal":
                    acc.text.append(_text(part.get("refusal"), where))
        elif kind == "function_call":
            acc.calls[len(acc.calls)] = (
                [_text(item.get("name"), where)],
                [_text(item.get("arguments"), where)],
            )
        elif kind == "reasoning":
            parts = item.get("content") or []
            if not isinstance(parts, list):
                raise BuildError(f"{where}: reasoning content is not a list")
            for part in parts:
                part = _mapping(part, where)
                if part.get("type") == "reasoning_text":
                    reasoning.append(_text(part.get("text"), where))
    acc.finish = finish
    run = acc.run()
    if not any(reasoning):
        return run, False
    text = "".join(reasoning) + _REASONING_JOIN + run.text
    return Run(text_tokens(text), None, None, text, finish, tool_calls=run.tool_calls), True


def run_from_responses_response(body: Mapping[str, Any]) -> Run:
    """A non-streaming ``/v1/responses`` response body (a `response` object)."""
    return _responses_run(body, "responses response")[0]


def run_from_responses_stream(events: Sequence[Mapping[str, Any]]) -> Run:
    """Parsed JSON of the SSE events of a streamed response (`response.created` ...
    `response.completed`). The answer is the final response object the terminal event carries
    (its logprobs carry token bytes, the deltas' do not); its output items, if it lists none,
    come from the `response.output_item.done` events, and its logprobs, if it has none, from the
    `response.output_text.delta` events (older vLLM keeps them there only)."""
    final: Any = None
    items: list[Any] = []
    texts: list[str] = []
    entries: list[Any] = []
    for i, event in enumerate(events):
        where = f"responses event {i}"
        event = _mapping(event, where)
        kind = event.get("type")
        if kind in ("response.completed", "response.incomplete", "response.failed"):
            final = event.get("response")
        elif kind == "response.output_item.done":
            items.append(event.get("item"))
        elif kind == "response.output_text.delta":
            texts.append(_text(event.get("delta"), where))
            lp = event.get("logprobs")
            if isinstance(lp, list):
                entries += lp
    if final is None:
        raise BuildError("responses stream: no response.completed event")
    final = _mapping(final, "responses stream")
    if not final.get("output") and items:
        final = {**final, "output": items}
    run, reasoning = _responses_run(final, "responses stream")
    if run.logprobs is None and entries and not reasoning and "".join(texts) == run.text:
        acc = _Acc()
        acc.text.append(run.text)
        acc.chat_logprobs({"content": entries}, "responses stream")
        acc.finish = run.finish_reason
        acc.calls = {i: ([c.name], [c.arguments]) for i, c in enumerate(run.tool_calls)}
        return acc.run()
    return run
