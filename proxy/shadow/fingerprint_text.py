"""The `tbg status` line of a key's backend fingerprint, from its /tbg `fingerprints` block.

Plain values only (no estimator, no Prometheus client): `tbg status` renders a report it fetched.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def _g(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:.3g}"


def _interval(epoch: Mapping[str, Any]) -> str:
    return f"{_g(epoch.get('estimate'))} [{_g(epoch.get('lower'))}, {_g(epoch.get('upper'))}]"


def status_line(block: Mapping[str, Any] | None) -> str | None:
    """One `tbg status` line for a key's /tbg `fingerprints` block; None without a fingerprint."""
    if not block:
        return None
    current, previous = block.get("current"), block.get("previous")
    if not current:
        seen = ", ".join(block.get("trials_by_fingerprint") or {}) or "—"
        return f"  backend   no dominant fingerprint yet (seen: {seen})"
    line = f"  backend   {current.get('fingerprint')}, {current.get('trials', 0)} trials"
    mixed = block.get("mixed_trials") or 0
    if mixed:
        line += f" ({mixed} mixed)"
    changes = block.get("changes") or 0
    if not previous:
        return line + "; no change seen"
    moved = block.get("moved")
    verdict = f"T_bg MOVED {moved}" if moved else "T_bg within its interval"
    return (
        f"{line}; changed {changes}x, from {previous.get('fingerprint')}: T_bg before "
        f"{_interval(previous)}, after {_interval(current)}: {verdict}"
    )
