"""The decoder: one padded batch of jobs, decoded together with a KV cache, in a worker thread.

`Engine.run_batch(jobs)` is synchronous and meant to run in the scheduler's single-thread
executor. Rows are left-padded; every row's next token is picked by the mode's `DecodePolicy`.
Each accepted token is delivered to its job as a `TokenEvent` (thread-safe hand-off to the event
loop). A batch of one is the deterministic case; a batch whose composition follows the load is
the nondeterministic one (bf16 kernels reduce differently for different batch shapes).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from reference.model import LoadedModel
from reference.policy import DecodePolicy, SamplingParams, make_generator


@dataclass(frozen=True)
class TokenInfo:
    """A token as shown in logprobs: its text and raw bytes."""

    token_id: int
    text: str
    raw: bytes


@dataclass(frozen=True)
class TokenEvent:
    """One generated token (or, with token None, a finish without a new token)."""

    token: TokenInfo | None
    logprob: float | None
    top: tuple[tuple[TokenInfo, float], ...]
    text: str  # text delta released with this event (may be empty: held back, or special token)
    finish_reason: str | None = None


def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode (the byte-level BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


class Vocabulary:
    """Token id → `TokenInfo`, memoised per instance (byte-level BPE aware)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._decoder = _byte_decoder()
        self._special = set(tokenizer.all_special_ids)
        self._cache: dict[int, TokenInfo] = {}

    def info(self, token_id: int) -> TokenInfo:
        cached = self._cache.get(token_id)
        if cached is not None:
            return cached
        piece = str(self._tokenizer.convert_ids_to_tokens(token_id))
        if token_id in self._special or any(ch not in self._decoder for ch in piece):
            raw = piece.encode("utf-8")
        else:
            raw = bytes(self._decoder[ch] for ch in piece)
        info = TokenInfo(token_id, raw.decode("utf-8", errors="replace"), raw)
        self._cache[token_id] = info
        return info


class TextTracker:
    """Incremental detokenisation with stop strings: releases text only when it is final."""

    def __init__(self, tokenizer: Any, stop: tuple[str, ...]) -> None:
        self._tokenizer = tokenizer
        self._stop = stop
        self._ids: list[int] = []
        self.released = ""
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add a token; return the newly final text (empty while held back)."""
        self._ids.append(token_id)
        text = str(self._tokenizer.decode(self._ids, skip_special_tokens=True))
        if self._stop:
            start = max(0, len(self.released) - max(len(s) for s in self._stop))
            hits = [i for i in (text.find(s, start) for s in self._stop) if i >= 0]
            if hits:
                self.stopped = True
                return self._release(text[: min(hits)])
        end = len(text)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            end = len(text.rstrip("\ufffd"))
        for s in self._stop:  # hold back a suffix that may grow into a stop string
            for k in range(min(len(s) - 1, end), 0, -1):
                if text[end - k : end] == s[:k]:
                    end = min(end, len(text) - k)
                    break
        return self._release(text[:end])

    def flush(self) -> str:
        """At the end of generation, release whatever was held back (not after a stop)."""
        if self.stopped:
            return ""
        text = str(self._tokenizer.decode(self._ids, skip_special_tokens=True))
        return self._release(text)

    def _release(self, upto: str) -> str:
        if len(upto) <= len(self.released):
            return ""
        delta = upto[len(self.released) :]
        self.released = upto
        return delta


@dataclass(eq=False)
class Job:
    """A request in flight: prompt, parameters, and the queue its events go to (event loop side)."""

    prompt_ids: tuple[int, ...]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[TokenEvent | BaseException] = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def emit(self, item: TokenEvent | BaseException) -> None:
        """Thread-safe: deliver an event to the job's queue on its event loop."""
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)


class _Row:
    """Decode state of one job inside a batch (worker thread only)."""

    def __init__(self, job: Job, tokenizer: Any, eos_ids: frozenset[int]) -> None:
        self.job = job
        self.params = job.params
        self.generator = make_generator(None if job.params.greedy else job.params.seed)
        self.tracker = TextTracker(tokenizer, job.params.stop)
        self.eos_ids = eos_ids
        self.generated = 0
        self.done = False


class Engine:
    """Owns the model; decodes batches synchronously (call from one worker thread at a time)."""

    def __init__(
        self,
        loaded: LoadedModel,
        policy: DecodePolicy,
        on_tokens: Callable[[int], None] | None = None,
    ) -> None:
        self.loaded = loaded
        self.policy = policy
        self.vocab = Vocabulary(loaded.tokenizer)
        self.eos_ids = loaded.eos_token_ids
        pad = loaded.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else min(self.eos_ids))
        self.max_context = int(loaded.model.config.max_position_embeddings)
        self._on_tokens = on_tokens

    def run_batch(self, jobs: list[Job]) -> None:
        """Decode `jobs` together to completion; every job receives its events and a finish."""
        try:
            self._decode(jobs)
        except BaseException as exc:  # deliver the failure to every job still waiting
            for job in jobs:
                job.emit(exc)
            raise

    def _decode(self, jobs: list[Job]) -> None:
        import torch

        model = self.loaded.model
        rows = [_Row(job, self.loaded.tokenizer, self.eos_ids) for job in jobs]
        width = max(len(job.prompt_ids) for job in jobs)
        ids = torch.full((len(jobs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for i, job in enumerate(jobs):
            n = len(job.prompt_ids)
            ids[i, width - n :] = torch.tensor(job.prompt_ids, dtype=torch.long)
            mask[i, width - n :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
            while True:
                last = out.logits[:, -1, :].float()
                next_ids = [self._step(row, last[i]) for i, row in enumerate(rows)]
                if all(row.done for row in rows):
                    return
                mask = torch.cat([mask, torch.ones((len(jobs), 1), dtype=torch.long)], dim=1)
                positions = positions[:, -1:] + 1
                out = model(
                    input_ids=torch.tensor(next_ids, dtype=torch.long)[:, None],
                    attention_mask=mask,
                    position_ids=positions,
                    past_key_values=out.past_key_values,
                    use_cache=True,
                )

    def _step(self, row: _Row, logits: Any) -> int:
        """Pick, report and emit the next token of one row; return the id to feed back."""
        import torch

        if row.done:
            return self.pad_id
        if row.job.cancelled.is_set():
            row.done = True
            return self.pad_id
        choice = self.policy.choose(logits, row.params, row.generator)
        token = choice.token_id
        row.generated += 1
        if self._on_tokens is not None:
            self._on_tokens(1)
        is_eos = token in self.eos_ids
        text = "" if is_eos else row.tracker.push(token)
        finish: str | None = None
        if is_eos or row.tracker.stopped:
            finish = "stop"
        elif row.generated >= min(
            row.params.max_tokens, self.max_context - len(row.job.prompt_ids)
        ):
            finish = "length"
        if finish == "length" or is_eos:
            text += row.tracker.flush()
        logprob: float | None = None
        top: tuple[tuple[TokenInfo, float], ...] = ()
        if row.params.top_logprobs is not None:
            logprob = float(choice.logprobs[token].item())
            k = row.params.top_logprobs
            if k > 0:
                values, indices = torch.topk(choice.logprobs, k)
                top = tuple(
                    (self.vocab.info(int(j)), float(v))
                    for v, j in zip(values.tolist(), indices.tolist(), strict=True)
                )
        row.job.emit(TokenEvent(self.vocab.info(token), logprob, top, text, finish))
        row.done = finish is not None
        return token
