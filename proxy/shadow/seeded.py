"""Seeded reproducibility: how often a request sampled at temperature > 0 with a fixed `seed`
comes back the same when sent again with that seed.

An ideal stack reproduces such a request exactly: with the seed fixed, the sampler's Gumbel noise
g is fixed too, so a run is argmax_i(z_i + T·g_i) with the same g every time. A divergence between
two runs comes from the logits z moving (batch shape, kernels: the same causes as at T=0) or from
an upstream that ignores the seed (every replay then samples afresh). These trials are kept apart
from the greedy T_bg estimators and reported with the model-free statistics only: the exact-match
rate and the per-token divergence hazard with its interval, per (upstream, model_name) and per
request class.

Why not T_bg: the greedy Boltzmann model scores independent draws from softmax(ẑ/T_bg). A seeded
pair shares the unobserved g, and flips only where the *sampled* top-two gap, of z/T + g, is
smaller than the logit noise, so the same logit noise gives a hazard that depends on the request's
own temperature T and on a g no one reports. T_bg is not identifiable from these trials with that
model; what they do say is model-free: a zero hazard with a small upper bound means the stack's
logits and sampler were bit-reproducible for this traffic; a hazard near that of fresh sampling
at T means the seed is ignored (docs/shadow.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from estimator.online import OnlineConfig, OnlineEstimator, OnlineSnapshot, SufficientStats
from proxy.shadow.classes import RequestClass
from proxy.shadow.decisions_report import decisions_json
from proxy.shadow.decisions_state import NO_DECISIONS, DecisionsView

Key = tuple[str, str]  # (upstream, model_name)
ClassKey = tuple[str, str, RequestClass]


@dataclass(frozen=True)
class SeededView:
    """The published seeded report (immutable; part of the ShadowView)."""

    estimates: tuple[tuple[Key, OnlineSnapshot, SufficientStats], ...] = ()
    by_class: tuple[tuple[ClassKey, OnlineSnapshot], ...] = ()
    # tool/argument/field flips of seeded tools/json trials, apart from the greedy ones
    decisions: DecisionsView = NO_DECISIONS


class SeededReproducibility:
    """Rolling estimators of seeded trials, per (upstream, model_name) and per request class
    (bounded: the class set is fixed, proxy.shadow.classes). Event loop only."""

    def __init__(self, online: OnlineConfig) -> None:
        self._online = online
        self._overall: dict[Key, OnlineEstimator] = {}
        self._by_class: dict[ClassKey, OnlineEstimator] = {}

    def add(self, key: Key, comparison: Any, request_class: RequestClass | None) -> None:
        est = self._overall.get(key)
        if est is None:
            est = self._overall[key] = OnlineEstimator(self._online)
        est.add(comparison)
        if request_class is not None:
            ckey = (key[0], key[1], request_class)
            by_class = self._by_class.get(ckey)
            if by_class is None:
                by_class = self._by_class[ckey] = OnlineEstimator(self._online)
            by_class.add(comparison)

    def publish(self) -> SeededView:
        return SeededView(
            tuple((key, est.snapshot(), est.stats()) for key, est in self._overall.items()),
            tuple((ckey, est.snapshot()) for ckey, est in self._by_class.items()),
        )


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


def _stats_json(snap: OnlineSnapshot) -> dict[str, Any]:
    return {
        "trials": snap.trials,
        "diverged_trials": snap.diverged_trials,
        "pairs": snap.pairs,
        "diverged": snap.diverged,
        "tokens_at_risk": snap.tokens_at_risk,
        "exact_match_rate": _num(snap.exact_match_rate),
        "hazard": _num(snap.hazard),
        "hazard_lower": _num(snap.hazard_lower),
        "hazard_upper": _num(snap.hazard_upper),
    }


def report(view: SeededView, steps: Sequence[int] = ()) -> list[dict[str, Any]]:
    """/tbg's `seeded` list: model-free reproducibility of seeded requests (no T_bg), and the
    decisions of their tools/json trials (None without one; compounded over `steps`)."""
    by_class: dict[Key, list[dict[str, Any]]] = {}
    for (upstream, model, request_class), snap in sorted(
        view.by_class, key=lambda item: item[0][2].order()
    ):
        by_class.setdefault((upstream, model), []).append(
            {**request_class.to_json(), **_stats_json(snap)}
        )
    return [
        {
            "upstream": upstream,
            "model_name": model,
            **_stats_json(snap),
            "by_class": by_class.get((upstream, model), []),
            "decisions": decisions_json(view.decisions, (upstream, model), steps),
        }
        for (upstream, model), snap, _ in view.estimates
    ]


def families(view: SeededView) -> Iterator[Metric]:
    """Per (upstream, model_name): 5 additive counters (undecayed, poolable across replicas) and
    4 rolling gauges. 9 series per key, only for keys with a seeded comparison."""
    um = ["upstream", "model_name"]
    counters = {
        "trials": "Seeded trials compared (a request and its replays with the same seed)",
        "pairs": "Seeded run pairs compared",
        "diverged": "Seeded run pairs that diverged",
        "tokens_at_risk": "Tokens compared in seeded pairs up to their first divergence",
        "exact_match_pairs": "Seeded run pairs that matched exactly",
    }
    fams = {
        name: CounterMetricFamily(f"tbg_seeded_{name}", text, labels=um)
        for name, text in counters.items()
    }
    gauges = {
        "exact_match_rate": "Seeded runs' exact-match rate (rolling)",
        "hazard": "Seeded per-token divergence hazard (rolling)",
        "hazard_lower": "Seeded divergence hazard, lower 95% bound",
        "hazard_upper": "Seeded divergence hazard, upper 95% bound",
    }
    gfams = {
        name: GaugeMetricFamily(f"tbg_seeded_{name}", text, labels=um)
        for name, text in gauges.items()
    }
    for (upstream, model), snap, stats in view.estimates:
        for name, fam in fams.items():
            fam.add_metric([upstream, model], float(getattr(stats, name)))
        for name, gfam in gfams.items():
            value = getattr(snap, name)
            gfam.add_metric([upstream, model], math.nan if value is None else float(value))
    yield from fams.values()
    yield from gfams.values()
