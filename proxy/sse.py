"""Incremental Server-Sent Events parsing: bytes in, complete events out.

Events are split on blank lines (`\\n\\n`, `\\r\\n\\r\\n`, and mixes of the two) on the raw bytes,
before any decoding, so a multi-byte UTF-8 character split across network reads is never cut.
The proxy relays the bytes itself; this parser only works on a copy (the tee).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

_BOUNDARY = re.compile(rb"\r?\n\r?\n")
_DONE = "[DONE]"
_LINES = re.compile(r"\r\n|\r|\n")


class SSESplitter:
    """Accumulates bytes and hands back each complete event's bytes, terminator included."""

    __slots__ = ("_buffer", "_scanned")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._scanned = 0  # bytes already searched without finding a boundary

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        events: list[bytes] = []
        start = 0
        # A boundary is at most 4 bytes, so re-scan only the last 3 bytes already searched.
        pos = max(0, self._scanned - 3)
        while (match := _BOUNDARY.search(self._buffer, pos)) is not None:
            events.append(bytes(self._buffer[start : match.end()]))
            start = pos = match.end()
        if start:
            del self._buffer[:start]
        self._scanned = len(self._buffer)
        return events

    def flush(self) -> bytes:
        """The trailing bytes of an unterminated last event (b"" if none); resets the buffer."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        self._scanned = 0
        return rest


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One parsed event: its `data` (lines joined by \\n; None when absent) and `event` name."""

    data: str | None
    event: str | None = None

    @property
    def done(self) -> bool:
        return self.data is not None and self.data.strip() == _DONE


def parse_event(raw: bytes) -> SSEEvent:
    """Parse one complete event's bytes (as returned by SSESplitter)."""
    data_lines: list[str] = []
    name: str | None = None
    # Only CRLF, CR and LF end SSE lines; str.splitlines() would also split on U+2028/U+2029/
    # U+0085/\x1c-\x1e, which JSON (orjson, vLLM) carries unescaped inside strings.
    for line in _LINES.split(raw.decode("utf-8", errors="replace")):
        if not line or line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if key == "data":
            data_lines.append(value)
        elif key == "event":
            name = value
    return SSEEvent("\n".join(data_lines) if data_lines else None, name)


def event_json(raw: bytes) -> Mapping[str, Any] | None:
    """The JSON object carried by a data event; None for `[DONE]`, comments and non-JSON data."""
    event = parse_event(raw)
    if event.data is None or event.done:
        return None
    try:
        payload = orjson.loads(event.data)
    except orjson.JSONDecodeError:
        return None
    return payload if isinstance(payload, dict) else None


class SSEParser:
    """Bytes in, JSON payloads of complete data events out (`[DONE]` excluded)."""

    __slots__ = ("_splitter",)

    def __init__(self) -> None:
        self._splitter = SSESplitter()

    def feed(self, data: bytes) -> list[Mapping[str, Any]]:
        return [p for raw in self._splitter.feed(data) if (p := event_json(raw)) is not None]

    def close(self) -> list[Mapping[str, Any]]:
        rest = self._splitter.flush()
        payload = event_json(rest) if rest.strip() else None
        return [payload] if payload is not None else []


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One generated token as streamed, with its logprob when the upstream sent one."""

    choice: int
    token: str
    logprob: float | None


def tokens_from_event(payload: Mapping[str, Any]) -> Iterator[TokenLogprob]:
    """Tokens and logprobs of one chat.completion.chunk or text_completion event.

    Chat chunks carry `choices[i].logprobs.content[*].{token, logprob}`; completion events carry
    `choices[i].logprobs.{tokens, token_logprobs}`. Without logprobs, the delta text is one token.
    """
    choices = payload.get("choices")
    if not isinstance(choices, list):
        return
    for position, choice in enumerate(choices):
        if not isinstance(choice, dict):
            continue
        index = choice.get("index", position)
        index = index if isinstance(index, int) else position
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict):
            content = logprobs.get("content")
            if isinstance(content, list):
                for entry in content:
                    if isinstance(entry, dict) and isinstance(entry.get("token"), str):
                        yield TokenLogprob(index, entry["token"], _number(entry.get("logprob")))
                continue
            tokens, values = logprobs.get("tokens"), logprobs.get("token_logprobs")
            if isinstance(tokens, list):
                values = values if isinstance(values, list) else []
                for j, token in enumerate(tokens):
                    if isinstance(token, str):
                        value = values[j] if j < len(values) else None
                        yield TokenLogprob(index, token, _number(value))
                continue
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
        if isinstance(text, str) and text:
            yield TokenLogprob(index, text, None)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
