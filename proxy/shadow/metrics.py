"""Prometheus exposition of the shadow path.

Gauges carry each replica's own estimate; counters carry the additive sufficient statistics
(pairs, divergences, tokens at risk, per-grid negative log-likelihood) so recording rules can pool
replicas by summing `increase()` without any shared state between them.

`ShadowExposition.render` turns one published ShadowView into exposition text; the Aggregator calls
it in a worker thread when it publishes a changed view, and /metrics appends the bytes. The fine
grid is exported once per (upstream, model_name), every LOAD_GRID_STRIDE-th (third) point of it per
load bucket. Only the two live gauges
(queue depth, replays in flight) are read at scrape time, by `LiveCollector`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from proxy.shadow import fingerprint_export
from proxy.shadow.canary_report import canary_families
from proxy.shadow.config import ShadowConfig
from proxy.shadow.coverage import families as coverage_families
from proxy.shadow.decisions_report import decision_families
from proxy.shadow.seeded import families as seeded_families
from proxy.shadow.view import POSITION_BOUNDS, ShadowView

UM = ["upstream", "model_name"]
UMM = ["upstream", "model_name", "method"]
UMB = ["upstream", "model_name", "load_bucket"]
LOAD_GRID_STRIDE = 3  # per-load-bucket likelihood: every third grid point (series budget)


def grid_label(t: float) -> str:
    return f"{t:.6g}"


def grid_info(labels: list[str], grid: np.ndarray) -> GaugeMetricFamily:
    """The static neighbour map the recording rules read to interpolate between grid points:
    interior points of the fleet grid and of the per-load grid (every LOAD_GRID_STRIDE-th point),
    labelled with their neighbours; the value is the grid's step in log T."""
    fam = GaugeMetricFamily(
        "tbg_grid_info",
        "Grid neighbour map for the recording rules; value = step in log T",
        labels=["grid", "grid_t", "grid_prev", "grid_next"],
    )
    for name, stride in (("fleet", 1), ("load", LOAD_GRID_STRIDE)):
        idx = list(range(0, len(labels), stride))
        step = math.log(float(grid[idx[1]]) / float(grid[idx[0]]))
        for a, b, c in zip(idx, idx[1:], idx[2:], strict=False):
            fam.add_metric([name, labels[b], labels[a], labels[c]], step)
    return fam


def _finite(x: float | None) -> float:
    return math.nan if x is None else float(x)


class _ViewCollector(Collector):
    def __init__(self, exposition: ShadowExposition, view: ShadowView) -> None:
        self._exposition, self._view = exposition, view

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        return self._exposition.families(self._view)


class ShadowExposition:
    """The shadow families of one view; pure (safe in a worker thread: a view is immutable)."""

    def __init__(
        self, config: ShadowConfig, model_names: tuple[str, ...], grid: np.ndarray
    ) -> None:
        self._config = config
        self._models = model_names
        self._grid = grid
        self._grid_labels = [grid_label(float(t)) for t in grid]
        self._grid_info = grid_info(self._grid_labels, grid)  # static: built once

    def render(self, view: ShadowView) -> bytes:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_ViewCollector(self, view))
        return generate_latest(registry)

    def families(self, view: ShadowView) -> Iterator[Metric]:
        yield from self._estimates(view)
        yield from self._counters(view)
        yield from self._accounting(view)
        yield from self._static()
        yield from canary_families(view, self._grid_labels)  # live canaries (docs/canary.md)
        yield from coverage_families(view.measured)
        yield from seeded_families(view.seeded)
        yield from fingerprint_export.families(view)
        yield from decision_families(view.decisions)

    def _estimates(self, view: ShadowView) -> Iterator[Metric]:
        est = GaugeMetricFamily(
            "tbg_temperature", "Background temperature T_bg, point estimate", labels=UMM
        )
        lo = GaugeMetricFamily("tbg_temperature_lower", "T_bg, lower 95% bound", labels=UMM)
        hi = GaugeMetricFamily("tbg_temperature_upper", "T_bg, upper 95% bound", labels=UMM)
        sigma = GaugeMetricFamily(
            "tbg_jitter_sigma", "Logprob-gap noise sigma between runs", labels=UM
        )
        hazard = GaugeMetricFamily(
            "tbg_divergence_hazard", "Per-token divergence hazard", labels=UM
        )
        exact = GaugeMetricFamily(
            "tbg_exact_match_ratio", "Fraction of run pairs identical", labels=UM
        )
        stamp = GaugeMetricFamily(
            "tbg_estimate_last_update_timestamp_seconds",
            "Unix time of the last comparison",
            labels=UM,
        )
        for (upstream, model), snap, updated in view.snapshots():
            um = [upstream, model]
            umm = [upstream, model, snap.method]
            est.add_metric(umm, snap.estimate)
            lo.add_metric(umm, snap.lower)
            hi.add_metric(umm, snap.upper)
            sigma.add_metric(um, _finite(snap.jitter_sigma))
            hazard.add_metric(um, snap.hazard)
            exact.add_metric(um, snap.exact_match_rate)
            stamp.add_metric(um, updated)
        yield from (est, lo, hi, sigma, hazard, exact, stamp)

        lest = GaugeMetricFamily(
            "tbg_temperature_by_load", "T_bg estimate per load bucket", labels=[*UMM, "load_bucket"]
        )
        llo = GaugeMetricFamily(
            "tbg_temperature_by_load_lower",
            "T_bg lower bound per load bucket",
            labels=[*UMM, "load_bucket"],
        )
        lhi = GaugeMetricFamily(
            "tbg_temperature_by_load_upper",
            "T_bg upper bound per load bucket",
            labels=[*UMM, "load_bucket"],
        )
        for (upstream, model, bucket), snap in view.load_snapshots():
            labels = [upstream, model, snap.method, bucket]
            lest.add_metric(labels, snap.estimate)
            llo.add_metric(labels, snap.lower)
            lhi.add_metric(labels, snap.upper)
        yield from (lest, llo, lhi)

    def _counters(self, view: ShadowView) -> Iterator[Metric]:
        fams = {
            "trials": CounterMetricFamily("tbg_trials", "Trials compared", labels=UMB),
            "pairs": CounterMetricFamily("tbg_pairs_compared", "Run pairs compared", labels=UMB),
            "diverged": CounterMetricFamily(
                "tbg_pairs_diverged", "Run pairs that diverged", labels=UMB
            ),
            "tokens_at_risk": CounterMetricFamily(
                "tbg_tokens_compared", "Tokens at risk", labels=UMB
            ),
            "exact_match_pairs": CounterMetricFamily(
                "tbg_exact_match_pairs", "Run pairs identical", labels=UMB
            ),
        }
        jsq = CounterMetricFamily("tbg_jitter_sq_sum", "Sum of squared gap differences", labels=UM)
        jpos = CounterMetricFamily("tbg_jitter_positions", "Shared positions compared", labels=UM)
        jid = CounterMetricFamily(
            "tbg_jitter_identical_positions",
            "Shared positions with bit-identical logprobs",
            labels=UM,
        )
        # Series budget (docs/monitoring.md): the fine grid once per (upstream, model_name), every
        # LOAD_GRID_STRIDE-th (third) grid point per load bucket.
        nll = CounterMetricFamily(
            "tbg_nll",
            "Sum of -log-likelihood at T = grid_t, all load buckets",
            labels=[*UM, "grid_t"],
        )
        nll_load = CounterMetricFamily(
            "tbg_nll_by_load",
            "Sum of -log-likelihood at T = grid_t per load bucket (every third grid point)",
            labels=[*UMB, "grid_t"],
        )
        # The trial-level design effect of the pooled interval (estimator/profile.py): Σ over
        # trials of each trial's squared score (slope of its -log-likelihood in log T) on the fine
        # grid, and the independent events of the small-count correction (trials that diverged).
        # Per (upstream, model_name) only: the series budget (docs/monitoring.md) has no room for
        # a per-load copy, and the per-load rules borrow the fleet's design effect.
        events = CounterMetricFamily(
            "tbg_trials_scored_diverged",
            "Trials with top-k logprobs in which some pair diverged",
            labels=UM,
        )
        score_sq = CounterMetricFamily(
            "tbg_nll_score_sq",
            "Sum over trials of the squared slope in log T of the trial's -log-likelihood",
            labels=[*UM, "grid_t"],
        )
        jitter: dict[tuple[str, str], list[float]] = {}
        fleet: dict[tuple[str, str], np.ndarray] = {}
        fleet_sq: dict[tuple[str, str], np.ndarray] = {}
        fleet_events: dict[tuple[str, str], float] = {}
        for (upstream, model, bucket), st in view.counters():
            labels = [upstream, model, bucket]
            for name, fam in fams.items():
                fam.add_metric(labels, float(getattr(st, name)))
            acc = jitter.setdefault((upstream, model), [0.0, 0.0, 0.0])
            acc[0] += st.jitter_sq_sum
            acc[1] += st.jitter_positions
            acc[2] += st.jitter_identical_positions
            values = np.asarray(st.nll)
            pooled = fleet.get((upstream, model))
            fleet[(upstream, model)] = values if pooled is None else pooled + values
            squares = np.asarray(st.squares())
            pooled_sq = fleet_sq.get((upstream, model))
            fleet_sq[(upstream, model)] = squares if pooled_sq is None else pooled_sq + squares
            fleet_events[(upstream, model)] = (
                fleet_events.get((upstream, model), 0.0) + st.scored_diverged_trials
            )
            for i in range(0, len(values), LOAD_GRID_STRIDE):
                nll_load.add_metric([*labels, self._grid_labels[i]], float(values[i]))
        for (upstream, model), (sq, positions, identical) in jitter.items():
            jsq.add_metric([upstream, model], sq)
            jpos.add_metric([upstream, model], positions)
            jid.add_metric([upstream, model], identical)
        for (upstream, model), values in fleet.items():
            for grid_t, value in zip(self._grid_labels, values.tolist(), strict=True):
                nll.add_metric([upstream, model, grid_t], value)
        for (upstream, model), values in fleet_sq.items():
            for grid_t, value in zip(self._grid_labels, values.tolist(), strict=True):
                score_sq.add_metric([upstream, model, grid_t], value)
        for (upstream, model), value in fleet_events.items():
            events.add_metric([upstream, model], value)
        yield from fams.values()
        yield from (jsq, jpos, jid, nll, nll_load, score_sq, events)

        hist = HistogramMetricFamily(
            "tbg_first_divergence_position_tokens",
            "Token index of the first divergence of a pair",
            labels=UM,
        )
        for (upstream, model), counts, total in view.positions():
            cumulative, buckets = 0, []
            for bound, n in zip(POSITION_BOUNDS, counts, strict=True):
                cumulative += n
                buckets.append(("+Inf" if math.isinf(bound) else f"{bound:g}", float(cumulative)))
            hist.add_metric([upstream, model], buckets, sum_value=float(total))
        yield hist

    def _accounting(self, view: ShadowView) -> Iterator[Metric]:
        names = {
            "sampled": ("tbg_shadow_sampled", "Primaries sampled for replay"),
            "replayed": ("tbg_shadow_replayed", "Sampled primaries replayed and compared"),
            "failed": ("tbg_shadow_failed", "Sampled primaries whose replays all failed"),
        }
        fams = {k: CounterMetricFamily(n, h, labels=UM) for k, (n, h) in names.items()}
        seen: set[tuple[str, str]] = set()
        for (upstream, model, what), n in view.accounting.items():
            fams[what].add_metric([upstream, model], float(n))
            seen.add((upstream, model))
        dropped = CounterMetricFamily(
            "tbg_shadow_dropped", "Sampled primaries not replayed", labels=[*UM, "reason"]
        )
        for (upstream, model, reason), n in view.dropped.items():
            dropped.add_metric([upstream, model, reason], float(n))
        requests = CounterMetricFamily(
            "tbg_shadow_replay_requests", "Replay requests sent", labels=[*UM, "outcome"]
        )
        for (upstream, model, outcome), n in view.replay_requests.items():
            requests.add_metric([upstream, model, outcome], float(n))
        tokens = CounterMetricFamily(
            "tbg_shadow_replay_tokens", "Tokens spent on replays", labels=UM
        )
        for (upstream, model), n in view.replay_tokens.items():
            tokens.add_metric([upstream, model], float(n))
        eligible = CounterMetricFamily(
            "tbg_shadow_eligible",
            "Greedy (temperature-0) primaries that shadow replay may sample",
            labels=UM,
        )
        for (upstream, model), n in view.eligible.items():
            eligible.add_metric([upstream, model], float(n))
        yield from fams.values()
        yield from (dropped, requests, tokens, eligible)

    def _static(self) -> Iterator[Metric]:
        grid = GaugeMetricFamily(
            "tbg_grid_temperature", "Temperature of each grid point", labels=["grid_t"]
        )
        for label, t in zip(self._grid_labels, self._grid.tolist(), strict=True):
            grid.add_metric([label], t)
        yield self._grid_info
        ceiling = GaugeMetricFamily(
            "tbg_temperature_ceiling", "Configured T_bg ceiling", labels=["model_name"]
        )
        budget = GaugeMetricFamily(
            "tbg_shadow_replay_budget_tokens_per_minute",
            "Configured replay token budget",
            labels=["model_name"],
        )
        rate = GaugeMetricFamily(
            "tbg_shadow_sample_rate",
            "Configured shadow sample rate (0: not measured; the starvation alert reads it)",
            labels=["model_name"],
        )
        for model in (*self._models, "other"):
            policy = self._config.policy(model)
            ceiling.add_metric([model], policy.ceiling)
            budget.add_metric([model], policy.tokens_per_minute)
            rate.add_metric([model], policy.sample_rate)
        yield rate
        yield from (grid, ceiling, budget)


class LiveCollector(Collector):
    """The two gauges read at scrape time: they change by the millisecond and cost nothing."""

    def __init__(
        self, queue_depth: Callable[[], int], replays_in_flight: Callable[[], int]
    ) -> None:
        self._queue_depth = queue_depth
        self._replays_in_flight = replays_in_flight

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("tbg_shadow_queue_depth", "Finished primaries waiting for replay")
        depth.add_metric([], float(self._queue_depth()))
        inflight = GaugeMetricFamily("tbg_shadow_replays_in_flight", "Replays in flight")
        inflight.add_metric([], float(self._replays_in_flight()))
        yield from (depth, inflight)
