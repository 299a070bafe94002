"""The verdict of an A/B comparison at one load: how much of the baseline's randomness switching
to the candidate removes, with an interval, at what throughput, or "inconclusive".

The share removed is R = 1 − T_c / T_b (T_bg of candidate and baseline; 1: the candidate is
reproducible, 0: no change, < 0: the candidate is more random). Its interval is the range of R
over the rectangle of the two T_bg intervals, each computed at level 1 − (1 − level)/2: the two
endpoints are measured independently, so both cover with probability ≥ level (Bonferroni) and the
range of R covers too. It is conservative by construction, and needs a baseline whose interval
excludes 0 (nothing shown random, nothing to remove). The verdict is stated only when R's interval
excludes 0 (removes) or the candidate's interval lies above the baseline's (adds); otherwise it
is "inconclusive", with the reason.

Throughput is the candidate's generated tokens per second over the baseline's at the same load,
one measurement each (client side, including the network): a point figure, no interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from estimator.likelihood import estimate_likelihood
from estimator.model import Trial
from measure.analysis import T_MAX


@dataclass(frozen=True)
class Joint:
    """One endpoint's likelihood T_bg interval at the Bonferroni level (None: no logprobs)."""

    estimate: float
    lower: float
    upper: float
    level: float


def joint_level(level: float) -> float:
    return 1 - (1 - level) / 2


def joint_interval(trials: Sequence[Trial], level: float) -> Joint | None:
    paired = [t for t in trials if len(t.runs) >= 2]
    lvl = joint_level(level)
    try:
        r = estimate_likelihood(paired, level=lvl, t_max=T_MAX)
    except ValueError:
        return None
    return Joint(r.estimate, r.lower, r.upper, lvl)


@dataclass(frozen=True)
class Verdict:
    outcome: str  # "removes", "adds", "inconclusive"
    removed: float | None  # 1 − T_c/T_b (point)
    removed_lower: float | None
    removed_upper: float | None
    level: float  # the confidence of the share's interval (both T_bg intervals at once)
    throughput_ratio: float | None  # candidate tok/s / baseline tok/s
    text: str


def _pct(x: float) -> str:
    return f"{100 * x:.0f} %"


def _throughput(ratio: float | None) -> str:
    if ratio is None:
        return "throughput not measured"
    change = ratio - 1
    sign = "+" if change >= 0 else "−"
    return f"{_pct(ratio)} of the baseline's throughput ({sign}{_pct(abs(change))})"


def verdict(
    base: Joint | None,
    cand: Joint | None,
    base_tps: float | None,
    cand_tps: float | None,
    level: float,
) -> Verdict:
    ratio = cand_tps / base_tps if cand_tps is not None and base_tps else None
    tput = _throughput(ratio)
    lvl = joint_level(level)
    if base is None or cand is None:
        who = "baseline" if base is None else "candidate"
        return Verdict(
            "inconclusive",
            None,
            None,
            None,
            level,
            ratio,
            f"inconclusive: the {who} has no T_bg interval (no top-k logprobs or no runs); {tput}",
        )
    removed = 1 - cand.estimate / base.estimate if base.estimate > 0 else None
    lo = 1 - cand.upper / base.lower if base.lower > 0 else None
    hi = 1 - cand.lower / base.upper if base.upper > 0 else None
    both = f"{100 * lvl:g} % each"
    if cand.lower > base.upper:
        return Verdict(
            "adds",
            removed,
            lo,
            hi,
            level,
            ratio,
            f"switching adds randomness: candidate T_bg at least {cand.lower:.3g} vs baseline at "
            f"most {base.upper:.3g} ({both}); at {tput}",
        )
    if lo is None or hi is None:
        return Verdict(
            "inconclusive",
            removed,
            lo,
            hi,
            level,
            ratio,
            f"inconclusive: the baseline is not shown to be random (its T_bg interval at "
            f"{100 * lvl:g} % reaches 0: at most {base.upper:.3g}), so there is no randomness "
            f"shown that switching could remove; {tput}",
        )
    span = f"{_pct(lo)} to {_pct(hi)}, {100 * level:g} % joint"
    point = "n/a" if removed is None else _pct(removed)
    if lo > 0:
        return Verdict(
            "removes",
            removed,
            lo,
            hi,
            level,
            ratio,
            f"switching removes {point} of the randomness ({span}) at {tput}",
        )
    return Verdict(
        "inconclusive",
        removed,
        lo,
        hi,
        level,
        ratio,
        f"inconclusive: the share of the randomness removed, {point}, has an interval "
        f"({span}) that includes 0 (more runs or prompts narrow it); at {tput}",
    )
