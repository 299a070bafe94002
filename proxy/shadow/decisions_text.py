"""The `tbg status` lines of decision flips, from a `GET /tbg` report (plain dicts: the status CLI
imports no statistics)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _g(x: Any) -> str:
    return "-" if x is None else f"{x:.3g}"


def _rate_text(r: Mapping[str, Any]) -> str:
    return (
        f"{_g(r.get('rate'))} [{_g(r.get('lower'))}, {_g(r.get('upper'))}] "
        f"({r.get('changed', 0)} of {r.get('compared', 0)} replays, {r.get('trials', 0)} trials)"
    )


def decision_lines(
    entry: Mapping[str, Any], label: str = "decisions", against: str = "flip rates"
) -> list[str]:
    """`tbg status` lines for one estimate of a /tbg report (none without decisions); `label` and
    `against` name the block (a seeded estimate's decisions, a canary's cross-decisions)."""
    d = entry.get("decisions")
    if not isinstance(d, Mapping):
        return []
    lines = [f"  {label} {d.get('trials', 0)} tools/json trials; {against}, 95% interval:"]
    names = {"tool": "another tool", "arguments": "other arguments", "field": "another field"}
    for decision, label in names.items():
        r = d.get(decision) or {}
        if not r.get("compared"):
            continue
        extra = f", {r['unparseable']} unparseable" if r.get("unparseable") else ""
        lines.append(f"    {label:<16} {_rate_text(r)}{extra}")
    for c in (d.get("any") or {}).get("compounded") or ():
        lines.append(
            f"    a {c['steps']}-step agent run changes a decision: {_g(c.get('estimate'))} "
            f"[{_g(c.get('lower'))}, {_g(c.get('upper'))}]"
        )
    return lines
