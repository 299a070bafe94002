"""`tbg measure`'s decisions section: for prompts that carry `tools` or a JSON `response_format`,
how often a run decides otherwise than the prompt's first run (another tool, other arguments,
another top-level field value), with intervals that take the prompt as the unit, and the chance
that an agent run of n steps changes a decision (estimator.decisions, estimator.decision_rates).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from estimator.decision_rates import DecisionSums, Rate, compounded, rate
from estimator.decisions import DECISIONS, tally_trial
from estimator.model import Trial
from measure.prompts import PromptSet
from measure.report import fmt

STEPS = (10, 100)
LABELS = {"tool": "another tool", "arguments": "other arguments", "field": "another field value"}


def _rate(r: Rate) -> dict[str, Any]:
    return {"rate": r.estimate, "lower": r.lower, "upper": r.upper, "changed": r.changed,
            "compared": r.compared, "prompts": r.trials}  # fmt: skip


def section(trials: Sequence[Trial], prompts: PromptSet) -> dict[str, Any] | None:
    """The report's `decisions` entry (None when no prompt asks for tools or JSON)."""
    kinds = {p.id: p.kind for p in prompts.prompts}
    sums = DecisionSums()
    for trial in trials:
        tally = tally_trial(trial.runs, kinds.get(trial.fingerprint, "plain"))
        if tally is not None:
            sums = sums.fold(tally)
    if sums.trials == 0:
        return None
    out: dict[str, Any] = {"prompts": sums.trials, "runs_compared": sums.replays, "level": 0.95}
    for decision in DECISIONS:
        out[decision] = _rate(rate(sums.decisions[decision]))
    out["arguments"]["unparseable"] = sums.arguments_unparseable
    out["field"]["unparseable"] = sums.field_unparseable
    out["field"]["fields"] = {name: _rate(sums.field_rate(name)) for name in sorted(sums.fields)}
    any_rate = rate(sums.any)
    out["any"] = _rate(any_rate)
    out["any"]["compounded"] = [
        {"steps": c.steps, "estimate": c.estimate, "lower": c.lower, "upper": c.upper}
        for c in compounded(any_rate, STEPS)
    ]
    return out


def markdown(data: Mapping[str, Any]) -> list[str]:
    """The report's `## Decisions` lines (none without the section)."""
    d = data.get("decisions")
    if not isinstance(d, Mapping):
        return []
    lines = [
        "## Decisions",
        "",
        f"Runs compared with each prompt's first run: {d['runs_compared']} runs of {d['prompts']} "
        "tools/JSON prompts; rates with 95 % intervals (the prompt is the unit).",
        "",
    ]
    for decision, label in LABELS.items():
        r = d[decision]
        if not r["compared"]:
            continue
        extra = f", {r['unparseable']} unparseable" if r.get("unparseable") else ""
        lines.append(
            f"- {label}: {fmt(r['rate'])} [{fmt(r['lower'])}, {fmt(r['upper'])}] "
            f"({r['changed']} of {r['compared']} runs{extra})"
        )
    for c in d["any"]["compounded"]:
        lines.append(
            f"- a {c['steps']}-step agent run changes a decision: {fmt(c['estimate'])} "
            f"[{fmt(c['lower'])}, {fmt(c['upper'])}]"
        )
    return [*lines, ""]
