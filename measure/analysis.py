"""From run records to the numbers a report shows, through the estimator package only.

Model-free statistics first (science.md §2: exact-match rate, TARr@N, unique completions, the
per-token divergence hazard and the Kaplan–Meier curve of the first divergence), then the
`likelihood` (profile interval, likelihood.fit) and `jitter` estimates when runs carry top-k
logprobs. Everything returned is plain JSON-ready data plus the two curves the plots need.

One trial is one prompt and its runs, and the trial is the unit of independence in every interval:
the likelihood interval carries the trial-level design effect (estimator.likelihood), the hazard's
interval the per-trial overdispersion (estimator.stats.clustered_hazard), the Kaplan–Meier band
the same factor; a bootstrap over prompts is reported next to the likelihood interval as a check
of its spread. None of them covers a change of prompt mix.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as st

from estimator.compare import Nodes, compare_trial
from estimator.jitter import JitterDiagnostics, estimate_jitter
from estimator.likelihood import (
    Likelihood,
    LikelihoodDiagnostics,
    bootstrap_prompts,
    estimate_likelihood,
    loglik_grid,
    trial_nodes,
)
from estimator.model import Trial, TrialContext
from estimator.profile import critical_values, upper_drop
from estimator.result import Diagnostics, EstimateResult
from estimator.stats import (
    clustered_hazard,
    exact_match_rate,
    garwood,
    kaplan_meier,
    pairwise_first_divergences,
    tarr_at_n,
    unique_completions,
)
from measure.store import Record

T_MAX = 10.0


def trials_from(records: Iterable[Record], label: str = "") -> list[Trial]:
    """One trial per prompt (runs in run-index order); prompts with one run are kept (they count
    for unique completions but form no pair)."""
    by_prompt: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_prompt[r.key.prompt].append(r)
    ctx = TrialContext(load_bucket=label)
    return [
        Trial(pid, tuple(r.run() for r in sorted(rs, key=lambda r: r.key.run)), ctx)
        for pid, rs in sorted(by_prompt.items())
    ]


def result_dict(r: EstimateResult[Diagnostics]) -> dict[str, Any]:
    return r.to_dict()


@dataclass(frozen=True)
class Survival:
    """Kaplan–Meier S(t) = P(two runs agree on their first t tokens), with a pointwise band."""

    times: list[float]
    survival: list[float]
    lower: list[float]
    upper: list[float]
    pairs: int
    diverged: int
    horizon: float  # longest comparison (tokens): the curve is known up to here
    level: float


@dataclass(frozen=True)
class ProfileCurve:
    """ℓ(T) − ℓ(T̂) on a log grid, and the drop that bounds the interval."""

    temperatures: list[float]
    drop: list[float]
    threshold: float  # the lower end's drop (two-sided χ²₁(level)/2, times the design effect)
    threshold_upper: float  # the upper end's drop (small-count corrected, times the design effect)
    estimate: float
    lower: float
    upper: float
    level: float
    one_sided: bool


def model_free(trials: Sequence[Trial], *, level: float, max_tokens: int) -> dict[str, Any]:
    outputs = [[r.tokens for r in t.runs] for t in trials]
    paired = [o for o in outputs if len(o) >= 2]
    n_min = min((len(o) for o in outputs), default=0)
    pd = [pairwise_first_divergences(t.runs) for t in trials if len(t.runs) >= 2]
    hz = _hazard(pd, level)
    div, risk = int(hz.diverged), int(hz.tokens_at_risk)
    uniq = [unique_completions(o) for o in outputs]
    return {
        "prompts": len(trials),
        "runs": sum(len(o) for o in outputs),
        "runs_per_prompt_min": n_min,
        "pairs": sum(len(p.diverged) for p in pd),
        "diverged_pairs": div,
        "tokens_at_risk": risk,
        "exact_match_rate": exact_match_rate(paired) if paired else math.nan,
        "tarr_at_n": {"n": n_min, "value": tarr_at_n(outputs, n_min) if n_min >= 2 else math.nan},
        "unique_completions": {
            "mean_per_prompt": float(np.mean(uniq)) if uniq else math.nan,
            "max_per_prompt": max(uniq, default=0),
            "prompts_with_more_than_one": sum(u > 1 for u in uniq),
        },
        "hazard": {
            "method": "pairs' first divergences per token compared (up to and including the "
            "divergence); exact Poisson (Garwood) interval on the trial-level effective count",
            "per_token": hz.estimate,
            "lower": hz.lower,
            "upper": hz.upper,
            "level": level,
            "p_diverge_at_max_tokens": hz.p_diverge(max_tokens) if risk else math.nan,
        },
    }


def _hazard(pd: Sequence[Any], level: float) -> Any:
    d = np.array([float(p.diverged.sum()) for p in pd])
    e = np.array([float(p.at_risk.sum()) for p in pd])
    pairs = sum(len(p.diverged) for p in pd)
    return clustered_hazard(
        float(d.sum()),
        float(e.sum()),
        diverged_sq=float((d * d).sum()),
        diverged_x_risk=float((d * e).sum()),
        risk_sq=float((e * e).sum()),
        pairs_per_trial=pairs / len(pd) if pd else 1.0,
        level=level,
    )


def survival(trials: Sequence[Trial], *, level: float) -> Survival:
    """Kaplan–Meier over all pairs; the pointwise band's Greenwood SE is widened by the trial-level
    factor √(D/D_eff) of the hazard (pairs of one trial share runs and are not independent)."""
    pd = [pairwise_first_divergences(t.runs) for t in trials if len(t.runs) >= 2]
    if not pd:
        return Survival([], [], [], [], 0, 0, 0.0, level)
    dur = np.concatenate([p.at_risk for p in pd])
    ev = np.concatenate([p.diverged for p in pd])
    km = kaplan_meier(dur, ev)
    hz = _hazard(pd, level)
    # D/D_eff from the interval widths (Garwood's width scales as 1/√count)
    widen = 1.0
    plain = divergence_hazard_width(hz.diverged, level)
    if hz.estimate > 0 and plain > 0:
        widen = max(1.0, (hz.upper - hz.lower) / hz.estimate / plain)
    z = widen * float(st.norm.ppf(0.5 + level / 2))
    lo = np.clip(km.survival - z * km.std_err, 0, 1)
    hi = np.clip(km.survival + z * km.std_err, 0, 1)
    return Survival(
        km.times.tolist(),
        km.survival.tolist(),
        lo.tolist(),
        hi.tolist(),
        int(dur.size),
        int(ev.sum()),
        float(dur.max()),
        level,
    )


def divergence_hazard_width(count: float, level: float) -> float:
    """Relative width (upper − lower)/estimate of Garwood's interval for `count` events."""
    if count <= 0:
        return 0.0
    lo, hi = garwood(count, level)
    return (hi - lo) / count


def likelihood(
    trials: Sequence[Trial], *, level: float
) -> tuple[EstimateResult[LikelihoodDiagnostics], ProfileCurve]:
    """The Boltzmann likelihood estimate (estimator.likelihood.estimate_likelihood, unchanged) and
    its profile for the plot. Raises ValueError when no trie node carries logprobs from two runs."""
    paired = [t for t in trials if len(t.runs) >= 2]
    result = estimate_likelihood(paired, level=level, t_max=T_MAX)
    nodes = Nodes.concat([n for n in (compare_trial(t).nodes for t in paired) if n is not None])
    est, lo, hi = result.estimate, result.lower, result.upper
    one_sided = est == 0.0
    if one_sided:
        t_lo, t_hi = hi / 1000, min(T_MAX, hi * 4)
    else:
        t_lo, t_hi = max((lo if lo > 0 else est / 100) / 3, 1e-6), min(T_MAX, hi * 3)
    grid = np.geomspace(t_lo, t_hi, 200)
    ll = loglik_grid(nodes, grid)
    # Relative to ℓ(T̂) (fit's diagnostics), or to ℓ(T -> 0) when nothing diverged.
    d = result.diagnostics
    ref = Likelihood(nodes).l_inf if math.isnan(d.loglik_max) else d.loglik_max
    # The lower end uses χ²₁(level)/2; the upper end the small-count corrected drop on the trials
    # that diverged; both times the trial-level design effect (as estimate_likelihood does).
    two_sided, _ = critical_values(level)
    k = d.design_effect
    curve = ProfileCurve(
        grid.tolist(),
        (ll - ref).tolist(),
        -two_sided * k,
        -k * upper_drop(float(d.diverged_trials), level),
        est,
        lo,
        hi,
        level,
        one_sided,
    )
    return result, curve


def bootstrap(
    trials: Sequence[Trial],
    result: EstimateResult[LikelihoodDiagnostics],
    *,
    level: float,
    resamples: int = 400,
) -> dict[str, Any]:
    """The bootstrap over prompts next to the likelihood interval: its percentile interval, the SD
    of log T̂ over resamples, the interval's implied SD ((log upper − log lower)/(2·z)) and their
    ratio (near 1 when the interval's spread is the one the prompts show)."""
    parts = list(trial_nodes([t for t in trials if len(t.runs) >= 2]).parts)
    b = bootstrap_prompts(parts, resamples=resamples, level=level, seed=0)
    z = float(st.norm.ppf(0.5 + level / 2))
    implied = math.nan
    if result.lower > 0 and result.upper > result.lower:
        implied = (math.log(result.upper) - math.log(result.lower)) / (2 * z)
    return {
        "method": "bootstrap over prompts (percentile; T_hat of the likelihood per resample)",
        "level": level,
        **b.to_dict(),
        "interval_sd_log": implied,
        "sd_ratio": b.sd_log / implied if implied > 0 else math.nan,
    }


def jitter(trials: Sequence[Trial], *, level: float) -> EstimateResult[JitterDiagnostics]:
    return estimate_jitter([t for t in trials if len(t.runs) >= 2], level=level)


def has_logprobs(records: Iterable[Record]) -> bool:
    return any(r.top_logprobs is not None for r in records)


def estimates(
    trials: Sequence[Trial], *, level: float, with_logprobs: bool
) -> tuple[dict[str, Any], ProfileCurve | None, list[str]]:
    """{method: result dict} for likelihood and jitter, the profile curve, and notes."""
    out: dict[str, Any] = {}
    notes: list[str] = []
    curve = None
    if not with_logprobs:
        notes.append("no top-k logprobs in the runs: no likelihood/jitter estimate (text only)")
        return out, None, notes
    try:
        res, curve = likelihood(trials, level=level)
        out["likelihood"] = result_dict(res)
        try:
            out["bootstrap_prompts"] = bootstrap(trials, res, level=level)
        except ValueError as exc:
            notes.append(f"bootstrap over prompts: {exc}")
    except ValueError as exc:
        notes.append(f"likelihood: {exc}")
    try:
        out["jitter"] = result_dict(jitter(trials, level=level))
    except ValueError as exc:
        notes.append(f"jitter: {exc}")
    hits = sum(r.token_collisions for t in trials for r in t.runs)
    if hits:
        notes.append(
            f"token strings collided at {hits} position(s) (no bytes told the tokens apart, e.g. "
            "pieces of a multi-byte character all shown as '\ufffd'): each chosen token kept "
            "its own logprob, or was left unscored where that was unknown"
        )
    return out, curve, notes


def finite(obj: Any) -> Any:
    """JSON has no NaN/inf: map them to None, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    if isinstance(obj, np.floating | np.integer):
        return finite(obj.item())
    return obj
