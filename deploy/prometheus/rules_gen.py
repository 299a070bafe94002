"""Prometheus recording and alerting rules for tbg-proxy, as code.

Run `python deploy/prometheus/rules_gen.py` to regenerate the committed rule files
(`deploy/prometheus/rules/*.rules.yml`); tests/monitoring checks they are not stale.

The same generator renders the shortened copy the end-to-end test loads into a real Prometheus
(`Params.for_test()`): windows, `for:` durations and minimum sample counts are parameters, so the
test copy is the production rules with those numbers substituted and nothing else changed.

Pooled fleet T_bg (see docs/monitoring.md): replicas export additive per-grid negative
log-likelihood counters `tbg_nll_total{grid_t}`; summing their increase() over replicas and load
buckets gives the pooled profile NLL(T) on the grid. The rules read it exactly as a replica reads its
own (estimator.profile.grid_profile): a parabola in log T through each grid point's neighbours (a
static neighbour map, `tbg_grid_info`, lets a rule see them), the estimate at the vertex next to the
minimum, each interval end at the root of the parabola nearest to its crossing: the lower one at
χ²₁(0.95)/2 = 1.92 above the minimum, the upper one at 1.92 plus the small-count correction
A/(k + B)^Q for the k divergences in the window (3.00 at k = 0, the rule of three; → 1.92 as k
grows), where k counts independent events: trials that diverged, not pairs. Both drops are
multiplied by the trial-level design effect (estimator.profile.design_effect): the trial, not the
position, is the unit of independence, and replicas also export Σ over trials of each trial's
squared score per grid point (`tbg_nll_score_sq_total`) next to the trial count (`tbg_trials_total`),
so the robust (sandwich) variance adds up across replicas and windows like the curve does:
k = max(1, [n/(n − 1)]·(Σs² − (Σs)²/n)/H) at the grid point of the minimum. The per-load-bucket
rules borrow the fleet's k of the same window (the series budget has no room for per-load squares)
and count diverged pairs for their small-count correction (the diverged-trial counter is per model).
When the minimum sits on the smallest grid point (nothing diverged, or too little to tell), the
estimate is reported as 0 with lower bound 0.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
RULES_DIR = HERE / "rules"
RUNBOOK_BASE = "https://github.com/tbg-proxy/tbg-proxy/blob/main/docs/runbooks"

# Profile-likelihood drops: chi2.ppf(0.95, 1) / 2 for the lower end; the upper end's small-count
# correction c + a / (k + b)^q; the same numbers as estimator.profile.critical_values and
# estimator.profile.small_count(0.95) (tests/monitoring checks them).
TWO_SIDED_95 = 1.920729410347062
SMALL_COUNT_95 = (1.920729410347062, 0.4668663553922401, 0.2303, 0.568)
ROOT_WINDOW = 0.75  # estimator.profile.ROOT_WINDOW (tests/monitoring checks it)

GRID_T = "max by (grid_t) (tbg_grid_temperature)"
CEILING = "max by (model_name) (tbg_temperature_ceiling)"
FLEET_NLL = "tbg_nll_total"  # per (upstream, model_name), the fine grid
LOAD_NLL = "tbg_nll_by_load_total"  # per load bucket, every third grid point
FLEET_SQ = "tbg_nll_score_sq_total"  # Σ_t s_t² beside FLEET_NLL
FLEET_EVENTS = "tbg_trials_scored_diverged_total"  # independent divergences, per model
LOAD_EVENTS = "tbg_pairs_diverged_total"  # per load bucket: pairs (see the module docstring)
MIN_DESIGN_EFFECT = 1.0  # estimator.profile.MIN_DESIGN_EFFECT (tests/monitoring checks it)


@dataclass(frozen=True)
class Params:
    """Every number that differs between production and the end-to-end test copy."""

    short: str = "10m"  # short T_bg window (ceiling alert confirmation)
    long: str = "1h"  # long T_bg window (ceiling alert evidence, drift, dashboards)
    ops: str = "5m"  # window of the operational ratios (errors, latency, replay)
    starve: str = "30m"  # window of the starvation check
    stale_seconds: int = 1800  # estimate older than this while traffic flows -> stale
    min_pairs_short: int = 30
    min_pairs_long: int = 100
    for_ceiling: str = "5m"
    for_drift: str = "30m"
    for_starved: str = "15m"
    for_ops: str = "10m"
    interval: str = "30s"
    baseline_interval: str = "1m"
    drift_factor: float = 2.0
    suffix: str = ""  # appended to group names in the test copy
    runbook_base: str = RUNBOOK_BASE  # where runbook_url points (your fork or wiki)
    extra_labels: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def for_test() -> Params:
        """The end-to-end test copy: same rules, second-scale windows (see docs/monitoring.md)."""
        return Params(
            short="2m",
            long="5m",
            ops="1m",
            starve="2m",
            stale_seconds=120,
            min_pairs_short=3,
            min_pairs_long=6,
            for_ceiling="2s",
            for_drift="2s",
            for_starved="2s",
            for_ops="2s",
            interval="1s",
            baseline_interval="1s",
            suffix="-e2e",
        )


def _name(level: str, metric: str, op: str) -> str:
    return f"{level}:{metric}:{op}"


def _grid_info(grid: str) -> str:
    """The static neighbour map of one grid: interior points with their neighbours' labels; the
    value is the grid's step in log T (constant, the same on every replica)."""
    return f'max by (grid_t, grid_prev, grid_next) (tbg_grid_info{{grid="{grid}"}})'


def _shift(series: str, by: str, side: str, grid: str) -> str:
    """`series` (labels `by`, grid_t) moved one grid point: at grid_t, the value of its `side`
    ("prev" or "next") neighbour, via the static neighbour map."""
    moved = (
        f'label_replace(label_replace({series}, "grid_{side}", "$1", "grid_t", "(.*)"),'
        ' "grid_t", "", "grid_t", ".*")'
    )
    return (
        f"max by ({by}, grid_t) (\n  {moved}\n"
        f"  + on (grid_{side}) group_left (grid_t) (0 * {_grid_info(grid)})\n)"
    )


def tbg_group(
    level_labels: tuple[str, ...],
    window: str,
    op_window: str,
    *,
    metric: str,
    grid: str,
    events_metric: str,
    score_metric: str | None = None,
    design_from: str | None = None,
) -> list[dict[str, str]]:
    """Recording rules for the pooled estimate at one aggregation level and window (the same
    arithmetic as estimator.profile.grid_profile, see docs/monitoring.md).

    The pooled Σ −ℓ on the grid; each interior grid point's parabola through its neighbours
    (a, b in grid steps); the estimate at the vertex of the parabola at the grid minimum; each end
    the root of the parabola of the grid point nearest to the crossing (|t| <= 1/2). `window` is the
    PromQL range; `op_window` the window written into the rule names (always the production one, so
    the test copy's names match the dashboards and alerts). The design effect is computed from
    `score_metric` (Σ_t s_t²) and `tbg_trials_total`, or read from the record `design_from` (a
    coarser level's, joined on its labels).
    """
    by = ", ".join(level_labels)
    level = "_".join(level_labels)
    w = f"{op_window}"

    def n(metric_: str, op: str, grid_t: bool = False) -> str:
        return _name(f"{level}_grid_t" if grid_t else level, metric_, f"{op}{w}")

    nll = n("tbg_nll", "increase", True)
    excess = n("tbg_nll_excess", "increase", True)
    prev, nxt = n("tbg_nll_prev", "increase", True), n("tbg_nll_next", "increase", True)
    curv, slope = (
        n("tbg_nll_parabola_a", "increase", True),
        n("tbg_nll_parabola_b", "increase", True),
    )
    argmin = n("tbg_temperature_argmin", "mle")
    floor = n("tbg_temperature_at_grid_floor", "mle")
    vertex = n("tbg_nll_vertex_log_temperature", "mle")
    minimum = n("tbg_nll_min", "mle")
    thr = n("tbg_nll_threshold", "mle")
    thr_hi = n("tbg_nll_threshold_upper", "mle")
    events = n("tbg_nll_events", "increase")
    trials = n("tbg_trials", "increase")
    sq = n("tbg_nll_score_sq", "increase", True)
    design = n("tbg_nll_design_effect", "mle")
    roots_lo = n("tbg_nll_root_lower_log_temperature", "mle", True)
    roots_hi = n("tbg_nll_root_upper_log_temperature", "mle", True)
    est = n("tbg_temperature", "mle")
    lower = n("tbg_temperature_lower", "mle")
    upper = n("tbg_temperature_upper", "mle")
    pairs = n("tbg_pairs_compared", "increase")
    step = f"max by (grid_t) ({_grid_info(grid)})"
    log_t = f"ln({GRID_T})"
    at_min = f"on ({by}, grid_t) ({excess} <= 0)"

    def root(sign: str, threshold: str) -> str:
        disc = f"({slope} ^ 2 - 4 * {curv} * ({nll} - on ({by}) group_left () {threshold}))"
        t = f"((-{slope} {sign} sqrt({disc})) / (2 * {curv}))"
        offset = f"({t} * on (grid_t) group_left () {step})"
        return (
            f"(\n  {offset} + on (grid_t) group_left () {log_t}\n)\n"
            f"and on ({by}, grid_t) (abs({t}) <= {ROOT_WINDOW})\nand on ({by}, grid_t) ({curv} > 0)"
        )

    return [
        {
            "record": nll,
            "expr": f"sum by ({by}, grid_t) (increase({metric}[{window}]))",
        },
        {
            "record": excess,
            "expr": f"{nll} - on ({by}) group_left () min by ({by}) ({nll})",
        },
        {"record": prev, "expr": _shift(nll, by, "prev", grid)},
        {"record": nxt, "expr": _shift(nll, by, "next", grid)},
        {"record": curv, "expr": f"({nxt} + {prev}) / 2 - {nll}"},
        {"record": slope, "expr": f"({nxt} - {prev}) / 2"},
        {
            "record": argmin,
            "expr": f"min by ({by}) ({GRID_T} + on (grid_t) group_right () 0 * ({excess} <= 0))",
        },
        {
            "record": floor,
            "expr": f"{argmin} <= bool on () group_left () min(tbg_grid_temperature)",
        },
        {
            # log T at the vertex of the parabola at the minimum (the grid point itself on an edge)
            "record": vertex,
            "expr": (
                f"min by ({by}) (\n"
                f"  (-{slope} / (2 * {curv})) * on (grid_t) group_left () {step}\n"
                f"  + on (grid_t) group_left () {log_t}\n"
                f"  and {at_min} and on ({by}, grid_t) ({curv} > 0)\n)\n"
                f"or\nln({argmin})"
            ),
        },
        {
            "record": minimum,
            "expr": (
                f"min by ({by}) ({nll} - {slope} ^ 2 / (4 * {curv}) and {at_min}"
                f" and on ({by}, grid_t) ({curv} > 0))\nor\nmin by ({by}) ({nll})"
            ),
        },
        {
            # the small-count correction's events in the window (0, not empty, before the first)
            "record": events,
            "expr": (
                f"sum by ({by}) (increase({events_metric}[{window}]))\nor on ({by}) 0 * {minimum}"
            ),
        },
        *_design_rules(
            by,
            window,
            minimum,
            design,
            trials,
            sq,
            slope,
            curv,
            step,
            at_min,
            events,
            score_metric,
            design_from,
        ),
        {
            # the lower end: χ²₁(0.95)/2 above the minimum, times the design effect
            "record": thr,
            "expr": f"{minimum} + on ({by}) {TWO_SIDED_95!r} * {design}",
        },
        {
            # the upper end: plus the small-count correction for the window's k diverged trials
            "record": thr_hi,
            "expr": (
                f"{minimum}\n+ on ({by}) {design} * (\n  {SMALL_COUNT_95[0]!r}\n"
                f"  + {SMALL_COUNT_95[1]!r} / (({events} + {SMALL_COUNT_95[2]!r})"
                f" ^ {SMALL_COUNT_95[3]!r})\n)"
            ),
        },
        {"record": roots_lo, "expr": root("-", thr)},
        {"record": roots_hi, "expr": root("+", thr_hi)},
        {"record": est, "expr": f"exp({vertex}) * (1 - {floor})"},
        {
            # the nearest cell's root, clipped to the estimate; 0 when the interval leaves the grid
            "record": lower,
            "expr": (
                f"exp(min by ({by}) ({roots_lo})) < on ({by}) {est}\n"
                f"or on ({by}) ({est} and on ({by}) exp(min by ({by}) ({roots_lo})))\n"
                f"or on ({by}) {est} * 0"
            ),
        },
        {
            # the nearest cell's root, clipped to the estimate; the grid's top when it leaves it
            "record": upper,
            "expr": (
                f"exp(max by ({by}) ({roots_hi})) > on ({by}) {est}\n"
                f"or on ({by}) ({est} and on ({by}) exp(max by ({by}) ({roots_hi})))\n"
                f"or on ({by}) ({est} * 0 + on () group_left () max(tbg_grid_temperature))"
            ),
        },
        {
            "record": pairs,
            "expr": f"sum by ({by}) (increase(tbg_pairs_compared_total[{window}]))",
        },
    ]


def _design_rules(
    by: str,
    window: str,
    minimum: str,
    design: str,
    trials: str,
    sq: str,
    slope: str,
    curv: str,
    step: str,
    at_min: str,
    events: str,
    score_metric: str | None,
    design_from: str | None,
) -> list[dict[str, str]]:
    """The design effect's records: computed (trials, Σ s², then k) or borrowed."""
    floor = f"or on ({by}) 0 * {minimum} + {MIN_DESIGN_EFFECT!r}"
    if score_metric is None:
        assert design_from is not None
        on = "upstream, model_name"  # the fleet level's labels
        return [
            {
                "record": design,
                "expr": f"0 * {minimum} + on ({on}) group_left () {design_from}\n{floor}",
            }
        ]
    return [
        {
            "record": trials,
            "expr": (
                f"sum by ({by}) (increase(tbg_trials_total[{window}]))\nor on ({by}) 0 * {minimum}"
            ),
        },
        {
            # Σ over trials of the squared score at each grid point
            "record": sq,
            "expr": f"sum by ({by}, grid_t) (increase({score_metric}[{window}]))",
        },
        {
            # the trial-level design effect at the grid point of the minimum:
            # [n/(n−1)]·(Σs²·h² − b²/n)/(2a), at least 1; 1 when it cannot be read
            "record": design,
            "expr": (
                f"clamp_min(\n  max by ({by}) (\n"
                f"    (\n      {sq} * on (grid_t) group_left () ({step} ^ 2)\n"
                f"      - {slope} ^ 2 / on ({by}) group_left () {trials}\n    )\n"
                f"    * on ({by}) group_left () ({trials} / ({trials} - 1))\n"
                f"    / (2 * {curv})\n"
                f"    and {at_min} and on ({by}, grid_t) ({curv} > 0)\n  )\n"
                f"  and on ({by}) ({trials} > 1) and on ({by}) ({events} > 0),\n"
                f"  {MIN_DESIGN_EFFECT!r}\n)\n{floor}"
            ),
        },
    ]


def _ratio(num: str, den: str, by: str, window: str) -> str:
    """num/den of two counters' rates, 0 (not empty) when the numerator has no series yet."""
    n = f"sum by ({by}) (rate({num}[{window}]))"
    d = f"sum by ({by}) (rate({den}[{window}]))"
    return f"({n} or {d} * 0)\n/\n({d} > 0)"


def recording_groups(p: Params) -> list[dict[str, Any]]:
    um = "upstream, model_name"
    long_, short_ = Params().long, Params().short
    ops_ = Params().ops
    estimate_rules = (
        tbg_group(
            ("upstream", "model_name"),
            p.short,
            short_,
            metric=FLEET_NLL,
            grid="fleet",
            events_metric=FLEET_EVENTS,
            score_metric=FLEET_SQ,
        )
        + tbg_group(
            ("upstream", "model_name"),
            p.long,
            long_,
            metric=FLEET_NLL,
            grid="fleet",
            events_metric=FLEET_EVENTS,
            score_metric=FLEET_SQ,
        )
        + tbg_group(
            ("upstream", "model_name", "load_bucket"),
            p.long,
            long_,
            metric=LOAD_NLL,
            grid="load",
            events_metric=LOAD_EVENTS,
            design_from=_name("upstream_model_name", "tbg_nll_design_effect", f"mle{long_}"),
        )
    )
    model_free: list[dict[str, str]] = []
    for level_labels in (("upstream", "model_name"), ("upstream", "model_name", "load_bucket")):
        by = ", ".join(level_labels)
        level = "_".join(level_labels)
        model_free += [
            {
                "record": _name(level, "tbg_divergence", f"ratio_rate{long_}"),
                "expr": _ratio("tbg_pairs_diverged_total", "tbg_pairs_compared_total", by, p.long),
            },
            {
                "record": _name(level, "tbg_divergence_hazard", f"ratio_rate{long_}"),
                "expr": _ratio("tbg_pairs_diverged_total", "tbg_tokens_compared_total", by, p.long),
            },
        ]
    model_free += [
        {
            "record": _name("upstream_model_name", "tbg_exact_match", f"ratio_rate{long_}"),
            "expr": _ratio("tbg_exact_match_pairs_total", "tbg_pairs_compared_total", um, p.long),
        },
        {
            # sigma_Delta^2 = sum(delta^2) / (2 N)  (science.md 3c), pooled over replicas
            "record": _name("upstream_model_name", "tbg_jitter_sigma", f"rate{long_}"),
            "expr": (
                f"sqrt(\n  sum by ({um}) (rate(tbg_jitter_sq_sum_total[{p.long}]))\n  /\n"
                f"  (2 * sum by ({um}) (rate(tbg_jitter_positions_total[{p.long}])) > 0)\n)"
            ),
        },
        {
            "record": _name("upstream_model_name", "tbg_jitter_identical", f"ratio_rate{long_}"),
            "expr": _ratio(
                "tbg_jitter_identical_positions_total", "tbg_jitter_positions_total", um, p.long
            ),
        },
    ]
    replay: list[dict[str, str]] = [
        {
            # tokens/minute replayed over the configured budget, pooled over replicas. The budget
            # gauge is per model_name (the shadow path exports it without `upstream`).
            "record": _name(
                "upstream_model_name", "tbg_shadow_replay_budget", f"utilization{ops_}"
            ),
            "expr": (
                f"sum by ({um}) (rate(tbg_shadow_replay_tokens_total[{p.ops}])) * 60\n"
                "/ on (model_name) group_left ()\n"
                "(sum by (model_name) (tbg_shadow_replay_budget_tokens_per_minute) > 0)"
            ),
        },
        {
            "record": _name("upstream_model_name", "tbg_shadow_dropped", f"ratio_rate{ops_}"),
            "expr": _ratio("tbg_shadow_dropped_total", "tbg_shadow_sampled_total", um, p.ops),
        },
        {
            "record": _name("upstream_model_name", "tbg_shadow_failed", f"ratio_rate{ops_}"),
            "expr": _ratio("tbg_shadow_failed_total", "tbg_shadow_sampled_total", um, p.ops),
        },
    ]
    traffic: list[dict[str, str]] = [
        {
            "record": _name("upstream", "tbg_requests", f"rate{ops_}"),
            "expr": f"sum by (upstream) (rate(tbg_requests_total[{p.ops}]))",
        },
        {
            "record": _name("upstream", "tbg_upstream_errors", f"ratio_rate{ops_}"),
            "expr": _ratio("tbg_upstream_errors_total", "tbg_requests_total", "upstream", p.ops),
        },
        {
            "record": _name("upstream", "tbg_requests_5xx", f"ratio_rate{ops_}"),
            "expr": (
                f'(sum by (upstream) (rate(tbg_requests_total{{status=~"5.."}}[{p.ops}]))'
                f" or sum by (upstream) (rate(tbg_requests_total[{p.ops}])) * 0)\n/\n"
                f"(sum by (upstream) (rate(tbg_requests_total[{p.ops}])) > 0)"
            ),
        },
        {
            "record": _name("route", "tbg_proxy_added_seconds", f"p99_{ops_}"),
            "expr": (
                "histogram_quantile(0.99, sum by (route, le) "
                f"(rate(tbg_proxy_added_seconds_bucket[{p.ops}])))"
            ),
        },
        {
            "record": _name("upstream_model_name", "tbg_shadow_eligible", f"rate{Params().starve}"),
            "expr": f"sum by ({um}) (rate(tbg_shadow_eligible_total[{p.starve}]))",
        },
        {
            "record": _name("upstream_model_name", "tbg_chat_requests", f"rate{Params().starve}"),
            "expr": (
                f'sum by ({um}) (rate(tbg_requests_total{{route=~"chat|completions"}}[{p.starve}]))'
            ),
        },
    ]
    return [
        {"name": f"tbg-estimate{p.suffix}", "interval": p.interval, "rules": estimate_rules},
        {"name": f"tbg-model-free{p.suffix}", "interval": p.interval, "rules": model_free},
        {"name": f"tbg-operations{p.suffix}", "interval": p.interval, "rules": replay + traffic},
    ]


def _runbook(alert: str, p: Params) -> str:
    return f"{p.runbook_base.rstrip('/')}/{alert}.md"


def alert_rules(p: Params) -> list[dict[str, Any]]:
    um = "upstream, model_name"
    L, S = Params().long, Params().short
    ops = Params().ops
    lower_l = _name("upstream_model_name", "tbg_temperature_lower", f"mle{L}")
    lower_s = _name("upstream_model_name", "tbg_temperature_lower", f"mle{S}")
    upper_l = _name("upstream_model_name", "tbg_temperature_upper", f"mle{L}")
    est_l = _name("upstream_model_name", "tbg_temperature", f"mle{L}")
    pairs_l = _name("upstream_model_name", "tbg_pairs_compared", f"increase{L}")
    pairs_s = _name("upstream_model_name", "tbg_pairs_compared", f"increase{S}")
    chat = _name("upstream_model_name", "tbg_chat_requests", f"rate{Params().starve}")
    eligible = _name("upstream_model_name", "tbg_shadow_eligible", f"rate{Params().starve}")

    def drift(baseline: str) -> dict[str, Any]:
        alert = f"TbgDriftAbove{baseline}Baseline"
        return {
            "alert": alert,
            "expr": (
                f"{lower_l} > on ({um}) ({upper_l} offset {baseline})\n"
                f"and on ({um}) {est_l} > on ({um}) {p.drift_factor:g} * ({est_l} offset {baseline})\n"
                f"and on ({um}) {pairs_l} >= {p.min_pairs_long}\n"
                f"and on ({um}) ({pairs_l} offset {baseline}) >= {p.min_pairs_long}"
            ),
            "for": p.for_drift,
            "labels": {"severity": "warning", **p.extra_labels},
            "annotations": {
                "summary": f"T_bg of {{{{ $labels.model_name }}}} on {{{{ $labels.upstream }}}} "
                f"drifted above its {baseline} baseline",
                "description": (
                    f'Pooled T_bg lower bound over the last {L} is {{{{ $value | printf "%.4g" }}}},'
                    f" above the upper bound of the same window {baseline} ago, and the estimate is"
                    f" more than {p.drift_factor:g}x the baseline estimate."
                ),
                "runbook_url": _runbook(alert, p),
            },
        }

    return [
        {
            "alert": "TbgAboveCeiling",
            "expr": (
                f"{lower_l} > on (model_name) group_left () {CEILING}\n"
                f"and on ({um}) {lower_s} > on (model_name) group_left () {CEILING}\n"
                f"and on ({um}) {pairs_l} >= {p.min_pairs_long}\n"
                f"and on ({um}) {pairs_s} >= {p.min_pairs_short}"
            ),
            "for": p.for_ceiling,
            "labels": {"severity": "critical", **p.extra_labels},
            "annotations": {
                "summary": "T_bg of {{ $labels.model_name }} on {{ $labels.upstream }} is above "
                "its ceiling",
                "description": (
                    f"The 95 % lower bound of the pooled T_bg over the last {L} is "
                    '{{ $value | printf "%.4g" }}, above the configured ceiling (tbg_temperature_ceiling);'
                    f" the last {S} agree, with at least {p.min_pairs_long} compared pairs."
                ),
                "runbook_url": _runbook("TbgAboveCeiling", p),
            },
        },
        drift("1d"),
        drift("7d"),
        {
            "alert": "TbgEstimatorStarved",
            # Only greedy traffic of a model that is sampled (sample rate > 0) can starve: traffic at
            # T > 0, models at sample_rate 0 and proxies with shadow replay off stay quiet.
            "expr": (
                f"{eligible} > 0\n"
                "and on (model_name) max by (model_name) (tbg_shadow_sample_rate) > 0\n"
                f"unless on ({um})\n"
                f"sum by ({um}) (increase(tbg_pairs_compared_total[{p.starve}])) > 0"
            ),
            "for": p.for_starved,
            "labels": {"severity": "warning", **p.extra_labels},
            "annotations": {
                "summary": "No shadow comparisons for {{ $labels.model_name }} on "
                "{{ $labels.upstream }} while traffic flows",
                "description": (
                    'Temperature-0 traffic is {{ $value | printf "%.3g" }} req/s and the model is '
                    f"sampled, but no replay pair was compared in the last {Params().starve}: the "
                    "T_bg estimate is starved."
                ),
                "runbook_url": _runbook("TbgEstimatorStarved", p),
            },
        },
        {
            "alert": "TbgEstimateStale",
            "expr": (
                f"time() - max by ({um}) (tbg_estimate_last_update_timestamp_seconds)"
                f" > {p.stale_seconds}\nand on ({um}) {chat} > 0"
            ),
            "for": p.for_starved,
            "labels": {"severity": "warning", **p.extra_labels},
            "annotations": {
                "summary": "T_bg estimate of {{ $labels.model_name }} on {{ $labels.upstream }} "
                "is stale",
                "description": (
                    "No replica updated its estimate for "
                    "{{ $value | humanizeDuration }} although traffic flows."
                ),
                "runbook_url": _runbook("TbgEstimateStale", p),
            },
        },
        {
            "alert": "TbgShadowReplayFailures",
            "expr": (
                f"{_name('upstream_model_name', 'tbg_shadow_failed', f'ratio_rate{ops}')} > 0.1"
            ),
            "for": p.for_ops,
            "labels": {"severity": "warning", **p.extra_labels},
            "annotations": {
                "summary": "Shadow replays fail for {{ $labels.model_name }} on "
                "{{ $labels.upstream }}",
                "description": (
                    "{{ $value | humanizePercentage }} of sampled requests failed to replay over "
                    f"the last {ops}."
                ),
                "runbook_url": _runbook("TbgShadowReplayFailures", p),
            },
        },
        {
            "alert": "TbgShadowReplayDrops",
            "expr": (
                f"sum by ({um}, reason) (rate(tbg_shadow_dropped_total[{p.ops}]))\n/ on ({um})"
                f" group_left ()\n(sum by ({um}) (rate(tbg_shadow_sampled_total[{p.ops}])) > 0)"
                "\n> 0.5"
            ),
            "for": p.for_ops,
            "labels": {"severity": "warning", **p.extra_labels},
            "annotations": {
                "summary": "Shadow replays dropped ({{ $labels.reason }}) for "
                "{{ $labels.model_name }} on {{ $labels.upstream }}",
                "description": (
                    "{{ $value | humanizePercentage }} of sampled requests were dropped with reason "
                    f"{{{{ $labels.reason }}}} over the last {ops}."
                ),
                "runbook_url": _runbook("TbgShadowReplayDrops", p),
            },
        },
        {
            "alert": "TbgUpstreamErrors",
            "expr": (
                f"{_name('upstream', 'tbg_upstream_errors', f'ratio_rate{ops}')} > 0.05\n"
                f"or {_name('upstream', 'tbg_requests_5xx', f'ratio_rate{ops}')} > 0.05"
            ),
            "for": p.for_ops,
            "labels": {"severity": "critical", **p.extra_labels},
            "annotations": {
                "summary": "Upstream {{ $labels.upstream }} is failing",
                "description": (
                    "{{ $value | humanizePercentage }} of requests to {{ $labels.upstream }} "
                    f"failed (transport errors or 5xx) over the last {ops}."
                ),
                "runbook_url": _runbook("TbgUpstreamErrors", p),
            },
        },
        {
            "alert": "TbgProxyAddedLatencyHigh",
            "expr": f"{_name('route', 'tbg_proxy_added_seconds', f'p99_{ops}')} > 0.005",
            "for": p.for_ops,
            "labels": {"severity": "warning", **p.extra_labels},
            "annotations": {
                "summary": "The proxy adds too much latency on route {{ $labels.route }}",
                "description": (
                    "p99 of the time spent in the proxy itself is "
                    "{{ $value | humanizeDuration }} over the last 5m (target: 1ms, alert: 5ms)."
                ),
                "runbook_url": _runbook("TbgProxyAddedLatencyHigh", p),
            },
        },
        *backend_change_alerts(p),
    ]


# A backend change that moved T_bg: the fingerprint changed within this window, and the current
# epoch's interval lies wholly outside the previous one's, each from at least this many trials.
FINGERPRINT_WINDOW = "6h"
FINGERPRINT_MIN_TRIALS = 20


def backend_change_alerts(p: Params) -> list[dict[str, Any]]:
    """TbgBackendChangeMovedTbg: per replica (its two epochs' intervals), joined with the fleet's
    change counter. The direction ("up" / "down") is a label of the alert, for routing."""
    um = "upstream, model_name"
    n = FINGERPRINT_MIN_TRIALS

    def epoch(bound: str, name: str) -> str:
        return (
            f'(tbg_temperature_by_epoch_{bound}{{epoch="{name}"}}'
            f' and tbg_trials_by_epoch{{epoch="{name}"}} >= {n})'
        )

    def moved(direction: str, agg: str, cur: str, op: str, prev: str) -> str:
        return (
            f"label_replace(\n  {agg} by ({um}) (\n    {epoch(cur, 'current')}\n"
            f"    {op} ignoring (epoch)\n    {epoch(prev, 'previous')}\n  ),\n"
            f'  "direction", "{direction}", "", ""\n)'
        )

    return [
        {
            "alert": "TbgBackendChangeMovedTbg",
            "expr": (
                f"(\n{moved('up', 'max', 'lower', '>', 'upper')}\nor\n"
                f"{moved('down', 'min', 'upper', '<', 'lower')}\n)\n"
                f"and on ({um})\nsum by ({um}) "
                f"(increase(tbg_backend_fingerprint_changes_total[{FINGERPRINT_WINDOW}])) > 0"
            ),
            "for": p.for_ops,
            "labels": {"severity": "critical", **p.extra_labels},
            "annotations": {
                "summary": "The backend of {{ $labels.model_name }} on {{ $labels.upstream }} "
                "changed and T_bg moved {{ $labels.direction }} with it",
                "description": (
                    "The backend fingerprint (system_fingerprint) changed in the last "
                    f"{FINGERPRINT_WINDOW}, and T_bg since the change is outside the interval of "
                    "before it: the near bound of the new epoch's 95 % interval is "
                    '{{ $value | printf "%.4g" }} (tbg_temperature_by_epoch_*, '
                    f"at least {n} trials each)."
                ),
                "runbook_url": _runbook("TbgBackendChangeMovedTbg", p),
            },
        }
    ]


def render_recording(p: Params) -> str:
    return _dump({"groups": recording_groups(p)})


def render_alerts(p: Params) -> str:
    return _dump(
        {
            "groups": [
                {"name": f"tbg-alerts{p.suffix}", "interval": p.interval, "rules": alert_rules(p)}
            ]
        }
    )


class _Dumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    if "\n" in data:
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


_Dumper.add_representer(str, _str_presenter)

HEADER = "# Generated by deploy/prometheus/rules_gen.py; do not edit by hand.\n"


def _dump(doc: dict[str, Any]) -> str:
    body = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=100, default_flow_style=False)
    return HEADER + body


def outputs(p: Params | None = None) -> dict[str, str]:
    """File name -> content of every generated rule file."""
    p = p or Params()
    return {
        "tbg-recording.rules.yml": render_recording(p),
        "tbg-alerts.rules.yml": render_alerts(p),
    }


def write(directory: Path = RULES_DIR, p: Params | None = None) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in outputs(p).items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description="Render the tbg-proxy Prometheus rules.")
    ap.add_argument("out", nargs="?", default=str(RULES_DIR), help="output folder")
    ap.add_argument("--runbook-base", default=RUNBOOK_BASE, help="base URL of the runbooks")
    a = ap.parse_args(argv)
    for path in write(Path(a.out), Params(runbook_base=a.runbook_base)):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
