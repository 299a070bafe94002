"""`tbg status`'s lines on what the numbers describe (/tbg's `measured` block) and on seeded
reproducibility (/tbg's `seeded` list): plain formatting of the JSON, so the CLI needs nothing
of the shadow path to print them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from proxy.shadow.decisions_text import decision_lines

Fmt = Callable[[Any], str]
# proxy.shadow.classes.PROMPT_TOKEN_EDGES, as a person reads them
PROMPT_TEXT = {"medium": "256 to 2047 prompt tokens", "long": ">= 2048 prompt tokens"}


def percent(share: Any) -> str:
    """`37.5 %`, or `—` before any request."""
    if not isinstance(share, int | float):
        return "—"
    return f"{100 * share:.3g} %"


def describe_measured(block: Mapping[str, Any], share: Fmt = percent) -> list[str]:
    """`tbg status`'s leading lines from a `measured` block."""
    total = int(block.get("requests") or 0)
    greedy = block.get("greedy") or {}
    seeded = block.get("seeded") or {}
    comp = block.get("compared") or {}
    g, s = comp.get("greedy") or {}, comp.get("seeded") or {}
    lines = [
        f"this number (T_bg) describes {share(greedy.get('share'))} of your traffic ({greedy.get('requests', 0)}"
        f" of {total} requests): the temperature-0 ones; measured on "
        f"{g.get('logprobs', 0) + g.get('text_only', 0)} compared ({g.get('logprobs', 0)} with "
        f"logprobs, {g.get('text_only', 0)} text only)",
        f"  seeded    {share(seeded.get('share'))} ({seeded.get('requests', 0)} requests at "
        f"temperature > 0 with a seed, reported apart): {s.get('logprobs', 0)} compared with "
        f"logprobs, {s.get('text_only', 0)} text only",
    ]
    parts = [
        f"{reason} {v.get('requests', 0)}"
        for reason, v in (block.get("ineligible") or {}).items()
        if v.get("requests")
    ]
    lines.append("  not measured  " + (", ".join(parts) if parts else "none"))
    dropped = block.get("dropped") or {}
    by_reason = ", ".join(f"{r} {n}" for r, n in (dropped.get("by_reason") or {}).items())
    lines.append(
        f"  eligible: {block.get('not_sampled', 0)} not sampled, {block.get('sampled', 0)} "
        f"sampled: {dropped.get('requests', 0)} dropped"
        + (f" ({by_reason})" if by_reason else "")
        + f", {block.get('failed', 0)} failed, {block.get('pending', 0)} pending"
    )
    return lines


def describe_seeded(entries: Any, g: Fmt) -> list[str]:
    """`tbg status` lines for the seeded report."""
    lines: list[str] = []
    for e in entries:
        lines.append(
            f"{e['upstream']} / {e['model_name']} seeded (temperature > 0 with a seed; not T_bg)"
        )
        lines.append(
            f"  exact match {g(e.get('exact_match_rate'))} of {e.get('pairs', 0)} pairs; "
            f"{e.get('diverged_trials', 0)} of {e.get('trials', 0)} trials diverged; hazard "
            f"{g(e.get('hazard'))} per token, 95% [{g(e.get('hazard_lower'))}, "
            f"{g(e.get('hazard_upper'))}]"
        )
        lines.append(
            "  reading   0 divergences: bit-reproducible with the seed; many: the logits move, or "
            "the upstream ignores `seed`"
        )
        lines += decision_lines(e, "seeded decisions")  # apart from the greedy ones
        lines.append("")
    return lines
