"""The backend fingerprint of an answer, as the upstream sent it: `system_fingerprint`.

What carries one, and what does not:
- chat/completions and completions, non-streaming: `system_fingerprint` at the top level of the
  body (OpenAI; vLLM since its `--fingerprint-mode`, default `full`:
  `vllm-<version>[-tp2…]-<hash8>`, the hash covering model, quantisation, attention backend and
  the rest of the engine config).
- streaming: in the chunks. OpenAI stamps every chunk, vLLM only the terminal ones (the chunk
  with a `finish_reason`, or the trailing usage chunk with `include_usage`): the last one wins.
- Not a fingerprint: response headers (`openai-version`, `x-request-id`, `openai-processing-ms`
  change per request or per API revision, not per backend build) and `/v1/models` (vLLM's
  `created` is the time of the request and `root` names the weights' folder, which outlives a
  version upgrade). An answer without the field has no fingerprint: none is made up.

Pure functions over what the Worker already holds (a parsed body, the primary's SSE payloads):
safe in a worker thread or in the shadow worker process.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

# A fingerprint becomes a Prometheus label value and a /tbg string: bounded in length. Real ones
# are short (OpenAI `fp_44709d6fcb`, vLLM `vllm-0.11.0-tp2-1a2b3c4d`).
MAX_LENGTH = 96


@dataclass(frozen=True, slots=True)
class TrialFingerprint:
    """The fingerprints one trial's runs carried: its primary's, then one per replay answer
    that came back (None where the answer had none)."""

    primary: str | None
    replays: tuple[str | None, ...] = ()

    @property
    def mixed(self) -> bool:
        """Some replay was served by a backend that says it is another one than the primary's
        (pods of mixed versions behind one upstream): the trial compares two backends."""
        return any(r is not None and r != self.primary for r in self.replays)

    @property
    def known(self) -> bool:
        return self.primary is not None


def clean(value: Any) -> str | None:
    """A fingerprint value as sent, or None: not a string, empty, or not printable ASCII."""
    if not isinstance(value, str):
        return None
    text: str = value.strip()
    if not text or not text.isascii() or not text.isprintable():
        return None
    return text[:MAX_LENGTH]


def from_body(body: Any) -> str | None:
    """The fingerprint of a non-streaming answer (its parsed JSON body)."""
    if not isinstance(body, Mapping):
        return None
    return clean(body.get("system_fingerprint"))


def from_events(events: Iterable[Mapping[str, Any]]) -> str | None:
    """The fingerprint of a streamed answer: the last chunk that carries one."""
    found: str | None = None
    for event in events:
        value = from_body(event)
        if value is not None:
            found = value
    return found


def primary_fingerprint(
    stream: bool, response_body: bytes | None, events: Iterable[Mapping[str, Any]]
) -> str | None:
    """The fingerprint of a captured primary (a Job's answer)."""
    if stream:
        return from_events(events)
    if not response_body or b"system_fingerprint" not in response_body:
        return None  # most answers: no second parse of the body
    try:
        return from_body(orjson.loads(response_body))
    except orjson.JSONDecodeError:
        return None


class FingerprintReader:
    """The Worker's notes: the fingerprints of each job's replay answers, until its trial is sent
    (`take`) or ends otherwise (`forget`). Bounded by the jobs in progress."""

    def __init__(self) -> None:
        self._replays: dict[int, list[str | None]] = {}

    def replay(self, job: int, body: Any) -> None:
        """A replay answer of `job` came back (its parsed body)."""
        self._replays.setdefault(job, []).append(from_body(body))

    def take(
        self, job: int, stream: bool, response_body: bytes | None,
        events: Iterable[Mapping[str, Any]],
    ) -> TrialFingerprint:  # fmt: skip
        replays = tuple(self._replays.pop(job, ()))
        return TrialFingerprint(primary_fingerprint(stream, response_body, events), replays)

    def forget(self, job: int) -> None:
        self._replays.pop(job, None)
