"""What share of the traffic the numbers describe: every request the Tap sees, by outcome.

A request on a tapped route is either ineligible (by reason, proxy.shadow.eligibility.REASONS) or
eligible with a decoding: `greedy` (counted by the shadow state's `eligible`, the traffic T_bg
describes) or `seeded` (counted here, the traffic the seeded report describes). An eligible
request is sampled or not; a sampled one is compared, dropped (by reason) or failed, as the
replay accounting already says. Compared trials are counted here by decoding and by whether at
least two runs carried logprobs (`logprobs`) or they were compared by their text alone
(`text_only`: an upstream without logprobs).

Requests on routes the Tap never sees (embeddings, anything else but the model list) count as
`route_unsupported` in /tbg's `measured` block, read from the proxy's per-route request counter
(`tbg_requests_total`) when /tbg is asked for; on /metrics they are that counter already.

Counting on the hot path is two dict lookups and an increment per request. On /metrics the series
are bounded: per (upstream, model_name) at most 5 ineligible reasons + 1 seeded eligible, each
born at its first request (not primed: the per-model series budget of 400 is nearly spent, so
greedy-only traffic adds none); the comparisons by kind are in /tbg only (docs/shadow.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from prometheus_client.core import CounterMetricFamily, Metric

from estimator.online import TrialComparison
from proxy.shadow.eligibility import DECODINGS, REASONS, ROUTES

Key = tuple[str, str]  # (upstream, model_name)
COMPARED_KINDS: tuple[str, ...] = ("logprobs", "text_only")
UNTAPPED_IGNORED = frozenset({"models"})  # the model list is not traffic a number could describe


def compared_with_logprobs(comparison: TrialComparison) -> bool:
    """Whether at least two of the trial's runs were compared by their logprobs."""
    return comparison.scored or comparison.nodes is not None or comparison.jitter_positions > 0


@dataclass(frozen=True)
class CoverageCounts:
    """The published counts (immutable; part of the ShadowView)."""

    ineligible: Mapping[tuple[str, str, str], int] = field(
        default_factory=lambda: MappingProxyType({})
    )  # (upstream, model_name, reason)
    seeded_eligible: Mapping[Key, int] = field(default_factory=lambda: MappingProxyType({}))
    # (upstream, model_name, decoding, logprobs | text_only)
    compared: Mapping[tuple[str, str, str, str], int] = field(
        default_factory=lambda: MappingProxyType({})
    )
    changes: int = 0  # requests counted so far: the publisher republishes when it moved


class Coverage:
    """The counters; mutated on the event loop only (by the Tap's plan and the Aggregator)."""

    def __init__(self) -> None:
        # upstream -> model_name -> count per reason (REASONS order): no tuple built per request
        self._ineligible: dict[str, dict[str, list[int]]] = {}
        self._seeded: dict[Key, int] = {}
        self._compared: dict[tuple[str, str, str, str], int] = {}
        self.changes = 0

    def _row(self, upstream: str, model: str) -> list[int]:
        models = self._ineligible.get(upstream)
        if models is None:
            models = self._ineligible[upstream] = {}
        row = models.get(model)
        if row is None:
            row = models[model] = [0] * len(REASONS)
        return row

    def ineligible(self, upstream: str, model: str, reason_index: int) -> None:
        """Hot path: one ineligible request (`reason_index` into REASONS)."""
        models = self._ineligible.get(upstream)
        row = models.get(model) if models is not None else None
        if row is None:
            row = self._row(upstream, model)
        row[reason_index] += 1
        self.changes += 1

    def seeded_eligible(self, key: Key) -> None:
        """Hot path: one seeded request that shadow replay may sample."""
        self._seeded[key] = self._seeded.get(key, 0) + 1
        self.changes += 1

    def compared(self, key: Key, decoding: str, comparison: TrialComparison) -> None:
        kind = "logprobs" if compared_with_logprobs(comparison) else "text_only"
        k = (key[0], key[1], decoding, kind)
        self._compared[k] = self._compared.get(k, 0) + 1

    def publish(self) -> CoverageCounts:
        ineligible = {
            (upstream, model, reason): n
            for upstream, models in self._ineligible.items()
            for model, row in models.items()
            for reason, n in zip(REASONS, row, strict=True)
        }
        return CoverageCounts(
            MappingProxyType(ineligible),
            MappingProxyType(dict(self._seeded)),
            MappingProxyType(dict(self._compared)),
            self.changes,
        )


def untapped_requests(samples: Iterable[tuple[Mapping[str, str], float]]) -> int:
    """Requests on routes the Tap never sees, from the per-route request counter's samples
    (labels, value): every route without a replay path but the model list."""
    return int(
        sum(
            value
            for labels, value in samples
            if labels.get("route") not in ROUTES and labels.get("route") not in UNTAPPED_IGNORED
        )
    )


def counter_samples(counter: Any) -> Iterator[tuple[Mapping[str, str], float]]:
    """(labels, value) of a prometheus_client Counter's `_total` samples."""
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                yield sample.labels, sample.value


def _share(n: int, total: int) -> float | None:
    return n / total if total else None


def measured(
    counts: CoverageCounts,
    greedy_eligible: Mapping[Key, int],
    totals: Mapping[str, int],
    drops: Mapping[str, int],
    untapped: int = 0,
) -> dict[str, Any]:
    """/tbg's `measured` block: who the numbers describe, as counts and shares of all requests.

    requests = ineligible (all reasons, untapped routes in `route_unsupported`) + greedy + seeded;
    greedy + seeded = sampled + not_sampled; sampled = compared + dropped + failed + pending."""
    reasons = dict.fromkeys(REASONS, 0)
    for (_, _, reason), n in counts.ineligible.items():
        reasons[reason] += n
    reasons["route_unsupported"] += untapped
    greedy = sum(greedy_eligible.values())
    seeded = sum(counts.seeded_eligible.values())
    total = sum(reasons.values()) + greedy + seeded
    compared = {d: dict.fromkeys(COMPARED_KINDS, 0) for d in DECODINGS}
    for (_, _, decoding, kind), n in counts.compared.items():
        compared[decoding][kind] += n
    sampled = totals.get("sampled", 0)
    dropped, failed = totals.get("dropped", 0), totals.get("failed", 0)
    n_compared = sum(sum(c.values()) for c in compared.values())
    return {
        "requests": total,
        "greedy": {"requests": greedy, "share": _share(greedy, total)},
        "seeded": {"requests": seeded, "share": _share(seeded, total)},
        "ineligible": {r: {"requests": n, "share": _share(n, total)} for r, n in reasons.items()},
        "not_sampled": greedy + seeded - sampled,
        "sampled": sampled,
        "compared": compared,
        "dropped": {"requests": dropped, "by_reason": dict(drops)},
        "failed": failed,
        "pending": max(0, sampled - n_compared - dropped - failed),
    }


def families(counts: CoverageCounts) -> Iterator[Metric]:
    """The coverage counters on /metrics (route_unsupported here: tapped requests only; the
    untapped ones are `tbg_requests_total` by route)."""
    um = ["upstream", "model_name"]
    inel = CounterMetricFamily(
        "tbg_shadow_ineligible",
        "Requests on replayable routes that shadow replay does not measure, by reason",
        labels=[*um, "reason"],
    )
    for (upstream, model, reason), n in counts.ineligible.items():
        inel.add_metric([upstream, model, reason], float(n))
    seeded = CounterMetricFamily(
        "tbg_shadow_seeded_eligible",
        "Seeded (temperature > 0 with a seed) primaries that shadow replay may sample",
        labels=um,
    )
    for (upstream, model), n in counts.seeded_eligible.items():
        seeded.add_metric([upstream, model], float(n))
    yield from (inel, seeded)
