"""The live canary: a share of the sampled trials is replayed on another upstream (`shadow.canary`,
docs/canary.md) instead of the one that served the primary, so that the fleet's answers and a
candidate's (batch-invariant kernels, batch size 1, another version or hardware) are compared on
the same live requests.

The replay target is a parameter of the Job (`Job.target`): the Tap picks it, the Worker replays to
it through the same code as any trial and compares here, the Aggregator files the result with the
canary book (proxy.shadow.canary_state), never in the fleet's own estimators. A canary trial gives:
- the canary's T_bg, from its replays compared with each other (needs `shadow.replays` >= 2);
- the cross-divergence: whether and where each canary replay's greedy answer leaves the primary's;
- the latency of both for the same request: the primary's, and each canary replay's.
Replays to the canary do not load the fleet: the fleet's primaries meet no replay of these trials.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from estimator.builders import text_tokens
from estimator.compare import compare_trial
from estimator.decisions import tally_trial
from estimator.model import Run, Trial, TrialContext
from estimator.online import TrialComparison
from proxy.shadow.canary_config import CanaryPolicy
from proxy.tap import Exchange

if TYPE_CHECKING:
    from proxy.shadow.messages import Compared, Job


@dataclass(frozen=True, slots=True)
class ReplayTarget:
    """Where a Job's replays go when it is not the primary's upstream: a canary."""

    upstream: str
    primary_seconds: float  # the primary's latency: request received to last byte relayed


@dataclass(frozen=True, slots=True)
class CrossResult:
    """What a canary trial adds besides the canary's own comparison (its replays together)."""

    canary: str  # the canary upstream
    replays: int  # canary replays answered (and compared with the primary)
    moved: int  # of them, those whose answer left the primary's
    first_moved: bool  # the first answered replay's answer differs: the prompt-level indicator
    first_divergences: tuple[int, ...]  # token index where each moved replay left the primary
    primary_seconds: float
    replay_seconds: tuple[float, ...]  # per answered replay


class CanaryChooser:
    """Picks the canary trials among a model's sampled primaries: exactly `share` of them, in a
    fixed stride (0.5: every other one), not by coin, so the split is exact at any count."""

    def __init__(self, canaries: dict[str, CanaryPolicy] | None = None) -> None:
        self._canaries = dict(canaries or {})
        self._credit: dict[str, float] = {}  # bounded: configured models only

    def target(self, exchange: Exchange) -> ReplayTarget | None:
        """The canary this finished primary is replayed on, or None (an ordinary trial)."""
        request = exchange.request
        policy = self._canaries.get(request.model_name)
        if policy is None or policy.upstream == request.upstream or policy.share <= 0:
            return None
        credit = self._credit.get(request.model_name, 0.0) + policy.share
        if credit < 1.0 - 1e-9:
            self._credit[request.model_name] = credit
            return None
        self._credit[request.model_name] = credit - 1.0
        return ReplayTarget(policy.upstream, exchange.finished_at - exchange.started_at)


def _aligned(a: Run, b: Run) -> tuple[Run, Run]:
    """Two runs position by position: by their text tokens unless both carry real tokens."""
    if (a.logprobs is None) == (b.logprobs is None):
        return a, b

    def plain(r: Run) -> Run:
        return Run(text_tokens(r.text), None, None, r.text, r.finish_reason)

    return plain(a), plain(b)


def canary_compared(
    compare: Callable[[Trial], TrialComparison],
    hash_key: bytes,
    job: Job,
    model_name: str,
    primary: Run,
    replays: tuple[Run, ...],
    seconds: tuple[float, ...],
    max_fields: int = 16,
) -> Compared:
    """A canary trial's terminal outcome: the canary's replays compared together (scored for its
    T_bg), each replay against the primary (the cross-divergence) and, for a tools/json trial,
    each replay's decisions against the fleet primary's (the cross-decisions). Pure: safe in a
    thread."""
    from proxy.shadow.messages import Compared  # messages imports this module: import late
    from proxy.shadow.trial import comparable_runs

    assert job.target is not None
    canary = job.target.upstream
    digest = hashlib.blake2b(job.raw_body, key=hash_key, digest_size=8).hexdigest()
    context = TrialContext(canary, model_name, "")
    own = compare(Trial(digest, comparable_runs(replays), context))
    moved: list[int] = []
    flags: list[bool] = []
    for replay in replays:
        pair = _aligned(primary, replay)
        cross = compare_trial(Trial(digest, pair, context), with_nodes=False)
        flags.append(cross.diverged > 0)
        moved.extend(cross.first_divergences)
    result = CrossResult(
        canary, len(replays), sum(flags), bool(flags and flags[0]), tuple(moved),
        job.target.primary_seconds, seconds,
    )  # fmt: skip
    decisions = None
    if job.request_class is not None:  # would switching to the canary move the agent's decisions
        decisions = tally_trial((primary, *replays), job.request_class.kind, max_fields)
    return Compared(job.id, job.key, own, (), job.request_class, cross=result, decisions=decisions)
