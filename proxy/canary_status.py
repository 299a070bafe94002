"""The live canaries of a /tbg report as text for a person (`tbg status`, `GET /tbg?format=text`):
per (fleet, canary, model) both T_bg side by side, how many answers the canary would move and how
early, and the latency of both for the same requests. Pure: reads the JSON dict only."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from proxy.shadow.decisions_text import decision_lines


def _g(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:.3g}"


def _tbg(block: Mapping[str, Any] | None) -> str:
    if not block:
        return "— (no ordinary trials: share 1 sends them all to the canary)"
    return (
        f"{_g(block.get('estimate'))} [{_g(block.get('lower'))}, {_g(block.get('upper'))}], "
        f"{block.get('diverged', 0)}/{block.get('pairs', 0)} pairs diverged"
    )


def canary_lines(report: Mapping[str, Any]) -> list[str]:
    """The lines of the report's `canary` block (none without a configured canary)."""
    lines: list[str] = []
    for c in report.get("canary") or ():
        cross, latency = c.get("cross") or {}, c.get("latency") or {}
        own = c.get("canary_tbg") or {}
        lines.append(
            f"canary {c.get('canary')} for {c.get('upstream')} / {c.get('model_name')} "
            f"(share {_g(c.get('share'))} of sampled trials)"
        )
        lines.append(f"  fleet T_bg   {_tbg(c.get('fleet_tbg'))}")
        note = f"  ({own['note']})" if own.get("note") else ""
        lines.append(f"  canary T_bg  {_tbg(own)}{note}")
        rate = cross.get("rate")
        lines.append(
            f"  moved        {cross.get('moved', 0)} of {cross.get('trials', 0)} prompts "
            f"({_g(None if rate is None else 100 * rate)} %, 95% interval "
            f"[{_g(None if cross.get('lower') is None else 100 * cross['lower'])}, "
            f"{_g(None if cross.get('upper') is None else 100 * cross['upper'])}] %) answer "
            f"differently on the canary; first divergence at token "
            f"{_g((cross.get('first_divergence') or {}).get('median'))} (median)"
        )
        primary, canary = latency.get("primary") or {}, latency.get("canary") or {}
        lines.append(
            f"  latency      primary {_g(primary.get('median_seconds'))} s, canary "
            f"{_g(canary.get('median_seconds'))} s (medians, same requests); canary/primary "
            f"{_g(latency.get('ratio_median'))}"
        )
        # how many of the agent's decisions switching to the canary would move
        lines += decision_lines(c, "cross-decisions", "canary vs fleet primary")
        lines.append("  next         docs/runbooks/decisions/ShouldWeSwitch.md")
        lines.append("")
    return lines
