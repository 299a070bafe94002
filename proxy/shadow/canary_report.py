"""The canary as its readers see it: the `canary` block of GET /tbg and the `tbg_canary_*` families
of /metrics, from the published ShadowView (pure: safe in the rendering thread).

Series per (fleet upstream, canary upstream, model_name) with a configured canary, and nothing per
request: 3 T_bg gauges, 3 moved-share gauges, 8 counters, the first-divergence histogram (12
buckets + sum + count = 14), the latency histogram for side=primary and side=canary (2 × (12 + 2) =
28) and the canary's grid likelihood (64 grid points): 120 series (docs/canary.md). With its first
tools/json trial, 6 more: the cross-decision counters (2 families × 3 decisions).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from estimator.decisions import DECISIONS
from estimator.online import OnlineSnapshot
from proxy.shadow.canary_state import LATENCY_BOUNDS
from proxy.shadow.config import ShadowConfig
from proxy.shadow.decisions_report import sums_json
from proxy.shadow.view import POSITION_BOUNDS, ShadowView

UCM = ["upstream", "canary", "model_name"]


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _headline(snap: OnlineSnapshot) -> dict[str, Any]:
    return {
        "method": snap.method,
        "estimate": _num(snap.estimate),
        "lower": _num(snap.lower),
        "upper": _num(snap.upper),
        "trials": snap.trials,
        "pairs": snap.pairs,
        "diverged": snap.diverged,
        "tokens_at_risk": snap.tokens_at_risk,
        "hazard": _num(snap.hazard),
    }


def _bound(b: float) -> str:
    return "+Inf" if math.isinf(b) else f"{b:g}"


def canary_json(view: ShadowView, config: ShadowConfig) -> list[dict[str, Any]]:
    """The `canary` block: per (fleet, canary, model) the two T_bg side by side, the
    cross-divergence and the latency of both for the same requests."""
    fleet = {key: snap for key, snap, _ in view.snapshots()}
    out: list[dict[str, Any]] = []
    for e in view.canary:
        upstream, canary, model = e.key
        lower, upper = e.moved_interval()
        fleet_snap = fleet.get((upstream, model))
        position_mean = e.position_sum / e.cross_moved if e.cross_moved else None
        own = _headline(e.snapshot)
        own["replays_per_trial"] = config.replays
        if config.replays < 2:
            own["note"] = "the canary's T_bg needs shadow.replays >= 2 (its replays compared)"
        out.append({
            "upstream": upstream,
            "canary": canary,
            "model_name": model,
            "share": e.share,
            "fleet_tbg": _headline(fleet_snap) if fleet_snap is not None else None,
            "canary_tbg": own,
            "cross": {
                "unit": "prompt",
                "trials": e.trials,
                "moved": e.moved_trials,
                "rate": _num(e.moved_rate),
                "lower": _num(lower),
                "upper": _num(upper),
                "level": 0.95,
                "pairs": e.cross_pairs,
                "pairs_moved": e.cross_moved,
                "first_divergence": {
                    "median": _num(e.position_median),
                    "mean": position_mean,
                    "histogram": {
                        _bound(b): n for b, n in zip(POSITION_BOUNDS, e.position_counts, strict=True)
                    },
                },
            },
            "latency": {
                "primary": {
                    "median_seconds": _num(e.primary_median),
                    "mean_seconds": e.primary_sum / e.trials if e.trials else None,
                },
                "canary": {
                    "median_seconds": _num(e.canary_median),
                    "mean_seconds": e.canary_sum / e.canary_replays if e.canary_replays else None,
                },
                "ratio_median": _num(e.ratio_median),
            },
            # the canary replays' decisions against the fleet primary's (None: no tools/json trial)
            "decisions": (
                {"level": 0.95, "unit": "trial", "against": "fleet primary",
                 **sums_json(e.decisions, config.decision_steps)}
                if e.decisions.trials else None
            ),
            "last_update": e.last_update,
        })  # fmt: skip
    return out


def _histogram(counts: tuple[int, ...], bounds: tuple[float, ...]) -> list[tuple[str, float]]:
    cumulative, buckets = 0, []
    for bound, n in zip(bounds, counts, strict=True):
        cumulative += n
        buckets.append((_bound(bound), float(cumulative)))
    return buckets


def canary_families(view: ShadowView, grid_labels: list[str]) -> Iterator[Metric]:
    """The `tbg_canary_*` families of one view (without a configured canary: no series, the
    families only, so dashboards and rules read names the proxy exports)."""
    est = GaugeMetricFamily(
        "tbg_canary_temperature",
        "T_bg of the canary upstream, from its replays compared with each other",
        labels=[*UCM, "method"],
    )
    lo = GaugeMetricFamily(
        "tbg_canary_temperature_lower", "Canary T_bg, lower 95% bound", labels=[*UCM, "method"]
    )
    hi = GaugeMetricFamily(
        "tbg_canary_temperature_upper", "Canary T_bg, upper 95% bound", labels=[*UCM, "method"]
    )
    moved = GaugeMetricFamily(
        "tbg_canary_moved_ratio",
        "Share of prompts whose answer on the canary differs from the fleet's primary",
        labels=UCM,
    )
    moved_lo = GaugeMetricFamily(
        "tbg_canary_moved_ratio_lower", "Moved share, Wilson lower 95% bound", labels=UCM
    )
    moved_hi = GaugeMetricFamily(
        "tbg_canary_moved_ratio_upper", "Moved share, Wilson upper 95% bound", labels=UCM
    )
    counters = {
        "trials": CounterMetricFamily("tbg_canary_trials", "Canary trials compared", labels=UCM),
        "moved_trials": CounterMetricFamily(
            "tbg_canary_moved_trials",
            "Canary trials whose first canary answer differs from the primary",
            labels=UCM,
        ),
        "cross_pairs": CounterMetricFamily(
            "tbg_canary_cross_pairs", "(primary, canary replay) pairs compared", labels=UCM
        ),
        "cross_moved": CounterMetricFamily(
            "tbg_canary_cross_diverged", "(primary, canary replay) pairs diverged", labels=UCM
        ),
    }
    own = {
        "pairs": CounterMetricFamily(
            "tbg_canary_pairs_compared", "Canary replay pairs compared", labels=UCM
        ),
        "diverged": CounterMetricFamily(
            "tbg_canary_pairs_diverged", "Canary replay pairs diverged", labels=UCM
        ),
        "tokens_at_risk": CounterMetricFamily(
            "tbg_canary_tokens_compared", "Canary replay tokens at risk", labels=UCM
        ),
        "trials": CounterMetricFamily(
            "tbg_canary_scored_trials", "Canary trials with two or more replays", labels=UCM
        ),
    }
    nll = CounterMetricFamily(
        "tbg_canary_nll",
        "Sum of -log-likelihood of the canary's replays at T = grid_t",
        labels=[*UCM, "grid_t"],
    )
    positions = HistogramMetricFamily(
        "tbg_canary_first_divergence_position_tokens",
        "Token index where a canary replay first left the fleet's primary",
        labels=UCM,
    )
    latency = HistogramMetricFamily(
        "tbg_canary_latency_seconds",
        "Latency of the same requests: the fleet's primary (side=primary) and each canary replay "
        "(side=canary)",
        labels=[*UCM, "side"],
    )
    for e in view.canary:
        labels = list(e.key)
        snap = e.snapshot
        est.add_metric([*labels, snap.method], snap.estimate)
        lo.add_metric([*labels, snap.method], snap.lower)
        hi.add_metric([*labels, snap.method], snap.upper)
        low, high = e.moved_interval()
        moved.add_metric(labels, e.moved_rate)
        moved_lo.add_metric(labels, low)
        moved_hi.add_metric(labels, high)
        for name, fam in counters.items():
            fam.add_metric(labels, float(getattr(e, name)))
        for name, fam in own.items():
            fam.add_metric(labels, float(getattr(e.stats, name)))
        for grid_t, value in zip(grid_labels, e.stats.nll, strict=True):
            nll.add_metric([*labels, grid_t], float(value))
        positions.add_metric(
            labels, _histogram(e.position_counts, POSITION_BOUNDS), float(e.position_sum)
        )
        latency.add_metric(
            [*labels, "primary"], _histogram(e.primary_counts, LATENCY_BOUNDS), e.primary_sum
        )
        latency.add_metric(
            [*labels, "canary"], _histogram(e.canary_counts, LATENCY_BOUNDS), e.canary_sum
        )
    yield from (est, lo, hi, moved, moved_lo, moved_hi)
    yield from counters.values()
    yield from own.values()
    yield from (nll, positions, latency)
    yield from _decision_families(view)


def _decision_families(view: ShadowView) -> Iterator[Metric]:
    """Cross-decisions per (fleet, canary, model, decision): canary replays compared with the
    fleet primary, and those that decided otherwise. Not primed: a canary without tools/json
    trials pays nothing."""
    labels = [*UCM, "decision"]
    replays = CounterMetricFamily(
        "tbg_canary_decision_replays",
        "Canary replays compared with the fleet's primary on a decision",
        labels=labels,
    )
    changed = CounterMetricFamily(
        "tbg_canary_decision_changed",
        "Canary replays whose decision (tool, arguments, field) differed from the fleet primary's",
        labels=labels,
    )
    for e in view.canary:
        if not e.decisions.trials:
            continue
        for decision in DECISIONS:
            sums = e.decisions.decisions[decision]
            replays.add_metric([*e.key, decision], float(sums.compared))
            changed.add_metric([*e.key, decision], float(sums.changed))
    yield from (replays, changed)
