"""The data model: a Run (one completion) and a Trial (one input sent several times)."""

from __future__ import annotations

from dataclasses import dataclass

TopLogprobs = tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class ToolCall:
    """One function call a run decided on: the tool's name and its arguments as the upstream
    wrote them (JSON text; parsed only where decisions are compared)."""

    name: str
    arguments: str


@dataclass(frozen=True)
class Run:
    """One completion of one input.

    ``logprobs[s]`` is the reported log-probability of ``tokens[s]`` and ``top_logprobs[s]`` the
    reported top-k (token, logprob) pairs at position ``s``, most likely first. Logprobs are raw
    (log softmax of the T=1 logits), as vLLM reports them by default. Both are ``None`` for a
    text-only run, whose ``tokens`` then come from a whitespace split (see builders).

    Tokens are keys (`estimator.tokens`): distinct tokens have distinct keys, from their bytes or
    ids where the upstream reports them, and the alternatives at one position never share a key.
    ``token_collisions`` counts the positions where strings collided and were told apart there.
    ``tool_calls`` are the function calls the run made, in order (empty for a text answer).
    """

    tokens: tuple[str, ...]
    logprobs: tuple[float, ...] | None
    top_logprobs: tuple[TopLogprobs, ...] | None
    text: str
    finish_reason: str | None
    token_collisions: int = 0
    tool_calls: tuple[ToolCall, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.tokens)
        if self.logprobs is not None and len(self.logprobs) != n:
            raise ValueError(f"logprobs has {len(self.logprobs)} entries for {n} tokens")
        if self.top_logprobs is not None and len(self.top_logprobs) != n:
            raise ValueError(f"top_logprobs has {len(self.top_logprobs)} entries for {n} tokens")

    @property
    def has_top_logprobs(self) -> bool:
        """True when every position reports at least two alternatives (needed by `likelihood`)."""
        return self.top_logprobs is not None and min(map(len, self.top_logprobs), default=0) >= 2


@dataclass(frozen=True)
class TrialContext:
    """Where the runs of a trial came from (labels for aggregation; never request content)."""

    upstream: str = ""
    model_name: str = ""
    load_bucket: str = ""


@dataclass(frozen=True)
class Trial:
    """One input (identified by a fingerprint) and its runs: the primary and its replays."""

    fingerprint: str
    runs: tuple[Run, ...]
    context: TrialContext = TrialContext()

    @property
    def n_pairs(self) -> int:
        n = len(self.runs)
        return n * (n - 1) // 2
