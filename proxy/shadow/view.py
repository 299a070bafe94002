"""The published view of the shadow path: an immutable snapshot of every estimate, counter and
exemplar, built by the Aggregator after changes (at most once per publish interval).

Readers (the Prometheus exposition, GET /tbg, `tbg demo`) only ever see a whole view, never the
estimators the Aggregator is still mutating; a view is safe to render in a worker thread.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from estimator.online import OnlineSnapshot, SufficientStats
from proxy.shadow.classes import RequestClass
from proxy.shadow.coverage import CoverageCounts
from proxy.shadow.seeded import SeededView

if TYPE_CHECKING:
    from proxy.shadow.canary_state import CanaryEntry
from proxy.shadow.decisions_state import NO_DECISIONS, DecisionsView
from proxy.shadow.fingerprints import FingerprintSummary

# First-divergence position histogram (tokens); powers of two like the load buckets.
POSITION_BOUNDS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, float("inf"))
ACCOUNTING_FIELDS: tuple[str, ...] = ("sampled", "replayed", "failed")
DROP_REASONS: tuple[str, ...] = (
    "queue_full",
    "rate_limit",
    "budget",
    "primary_incomplete",
    "opted_out",  # the client sent `X-TBG-Replay: never` (proxy/shadow/optout.py)
    "shutdown",  # sampled, still queued when the proxy stopped
)

Key = tuple[str, str]  # (upstream, model_name)
LoadKey = tuple[str, str, str]  # (upstream, model_name, load_bucket)
ClassKey = tuple[str, str, RequestClass]  # (upstream, model_name, request class)


@dataclass(frozen=True, slots=True)
class Exemplar:
    at: float  # unix time
    upstream: str
    model_name: str
    load_bucket: str
    request_hash: str
    position: int
    token_a: str
    token_b: str
    logprob_a: float | None
    logprob_b: float | None
    text: Mapping[str, Any] | None  # only with record_text: the input and the two continuations

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "at": self.at,
            "upstream": self.upstream,
            "model_name": self.model_name,
            "load_bucket": self.load_bucket,
            "request_hash": self.request_hash,
            "position": self.position,
            "token_a": self.token_a,
            "token_b": self.token_b,
            "logprob_a": self.logprob_a,
            "logprob_b": self.logprob_b,
        }
        if self.text is not None:
            out["text"] = dict(self.text)
        return out


def frozen(d: Mapping[Any, int]) -> Mapping[Any, int]:
    """A read-only copy: the view must not change when the Aggregator's dicts do."""
    return MappingProxyType(dict(d))


@dataclass(frozen=True)
class ShadowView:
    """Everything the shadow path knows, as of `published_at` (unix time). `version` grows by one
    per publication; renderers cache on it."""

    version: int
    published_at: float
    estimates: tuple[tuple[Key, OnlineSnapshot, float], ...]  # (key, snapshot, last update)
    by_load: tuple[tuple[LoadKey, OnlineSnapshot], ...]  # load buckets with at least one trial
    stats: tuple[tuple[LoadKey, SufficientStats], ...]  # undecayed, primed keys included
    position_counts: tuple[tuple[Key, tuple[int, ...], int], ...]  # per bucket, and Σ positions
    accounting: Mapping[LoadKey, int]  # (upstream, model, sampled|replayed|failed)
    dropped: Mapping[LoadKey, int]  # (upstream, model, reason)
    replay_requests: Mapping[LoadKey, int]  # (upstream, model, ok|error)
    replay_tokens: Mapping[Key, int]
    eligible: Mapping[Key, int]  # greedy primaries seen, sampled or not
    exemplars: tuple[Exemplar, ...]  # oldest first
    by_class: tuple[tuple[ClassKey, OnlineSnapshot], ...] = ()  # request classes compared
    canary: tuple[CanaryEntry, ...] = ()  # live canaries (proxy.shadow.canary_state)
    # who the numbers describe (proxy.shadow.coverage), and the seeded report (proxy.shadow.seeded)
    measured: CoverageCounts = field(default_factory=CoverageCounts)
    seeded: SeededView = field(default_factory=SeededView)
    fingerprints: tuple[FingerprintSummary, ...] = ()  # backend fingerprints per key
    decisions: DecisionsView = NO_DECISIONS  # tool/argument/field flips (tools/json trials)

    def snapshots(self) -> Iterator[tuple[Key, OnlineSnapshot, float]]:
        return iter(self.estimates)

    def load_snapshots(self) -> Iterator[tuple[LoadKey, OnlineSnapshot]]:
        return iter(self.by_load)

    def class_snapshots(self) -> Iterator[tuple[ClassKey, OnlineSnapshot]]:
        return iter(self.by_class)

    def counters(self) -> Iterator[tuple[LoadKey, SufficientStats]]:
        return iter(self.stats)

    def positions(self) -> Iterator[tuple[Key, tuple[int, ...], int]]:
        return iter(self.position_counts)

    def totals(self) -> dict[str, int]:
        """Accounting summed over keys: sampled == replayed + dropped + failed once idle."""
        out = {name: 0 for name in (*ACCOUNTING_FIELDS, "dropped")}
        for (_, _, what), n in self.accounting.items():
            out[what] = out.get(what, 0) + n
        out["dropped"] = sum(self.dropped.values())
        return out

    def drops_by_reason(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (_, _, reason), n in self.dropped.items():
            if n:
                out[reason] = out.get(reason, 0) + n
        return out
