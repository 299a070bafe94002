"""How decision flips are shown: the `decisions` object of `GET /tbg` and its Prometheus counters
(its `tbg status` lines: proxy.shadow.decisions_text).

Rates and their 95 % intervals come from estimator.decision_rates (the trial is the unit: replays
of one prompt are alike). `/metrics` carries only additive counters, labelled by upstream,
model_name and decision (tool, arguments, field): 2 families × 3 decisions = 6 series per
(upstream, model_name) with tools/json trials, so PromQL can rate them and pool replicas; field
names stay out of labels (they come from answers) and appear in `GET /tbg` only.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily, Metric

from estimator.decision_rates import DecisionSums, Rate, compounded, rate
from estimator.decisions import DECISIONS
from proxy.shadow.decisions_state import DecisionsView, Key

UMD = ["upstream", "model_name", "decision"]


def _num(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)


def rate_json(r: Rate) -> dict[str, Any]:
    return {
        "rate": _num(r.estimate),
        "lower": _num(r.lower),
        "upper": _num(r.upper),
        "trials": r.trials,
        "compared": r.compared,
        "changed": r.changed,
        "design_effect": _num(r.design_effect),
    }


def sums_json(sums: DecisionSums, steps: Sequence[int]) -> dict[str, Any]:
    """One key's (or class's) decisions: per decision a rate with its interval; `any` (a replay
    that changed any decision of its kind) compounded over agent runs of `steps` steps."""
    out: dict[str, Any] = {"trials": sums.trials, "replays": sums.replays}
    for decision in DECISIONS:
        out[decision] = rate_json(rate(sums.decisions[decision]))
    out["arguments"]["unparseable"] = sums.arguments_unparseable
    out["field"]["unparseable"] = sums.field_unparseable
    out["field"]["fields"] = [
        {"name": name, **rate_json(sums.field_rate(name))} for name in sorted(sums.fields)
    ]
    any_rate = rate(sums.any)
    out["any"] = rate_json(any_rate)
    out["any"]["compounded"] = [
        {"steps": c.steps, "estimate": _num(c.estimate), "lower": _num(c.lower),
         "upper": _num(c.upper)}
        for c in compounded(any_rate, steps)
    ]  # fmt: skip
    return out


def decisions_json(view: DecisionsView, key: Key, steps: Sequence[int]) -> dict[str, Any] | None:
    """The `decisions` entry of one estimate in `GET /tbg` (None: no tools/json trial yet)."""
    sums = view.get(key)
    if sums is None or sums.trials == 0:
        return None
    out = {"level": 0.95, "unit": "trial", **sums_json(sums, steps)}
    out["by_class"] = [
        {**request_class.to_json(), **sums_json(s, steps)} for request_class, s in view.classes(key)
    ]
    return out


def decision_families(view: DecisionsView) -> Iterator[Metric]:
    """Counters per (upstream, model_name, decision): replays compared, replays that changed the
    decision. Rate: increase(changed) / increase(replays). A model's six series appear with its
    first tools/json trial (not primed: a model without such traffic pays nothing)."""
    replays = CounterMetricFamily(
        "tbg_decision_replays", "Replays compared with their primary on a decision", labels=UMD
    )
    changed = CounterMetricFamily(
        "tbg_decision_changed",
        "Replays whose decision differed from their primary's (tool, arguments, field)",
        labels=UMD,
    )
    for (upstream, model), sums in view.overall:
        if sums.trials == 0:
            continue  # series only for models with tools/json trials (the series budget)
        for decision in DECISIONS:
            s = sums.decisions[decision]
            labels = [upstream, model, decision]
            replays.add_metric(labels, float(s.compared))
            changed.add_metric(labels, float(s.changed))
    yield from (replays, changed)
