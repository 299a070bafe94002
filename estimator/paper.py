"""`paper`: the Messina–Scotta KS-matching protocol (science.md §3a), step by step.

Per prompt compute MEMF, AvgLev, AvgLCS for the system under test (SUT) and for each reference
at each grid temperature; for each (reference, statistic) take the two-sample KS distance between
the SUT's vector over prompts and the reference's vector at each T; T_n = argmin over T (ties
averaged); T_bg = mean of the T_n over references × statistics. The protocol gives no
confidence interval: lower/upper/level are NaN and the T_n are in the diagnostics.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as st

from estimator.model import Trial
from estimator.result import EstimateResult
from estimator.stats import edit_lengths, index_pairs

# Θ: 0.00..0.19 step 0.01, 0.20..0.50 step 0.05, 0.6..1.0 step 0.1 (T = 0 as top-k 1).
PAPER_GRID: tuple[float, ...] = tuple(
    [round(0.01 * i, 2) for i in range(20)]
    + [round(0.2 + 0.05 * i, 2) for i in range(7)]
    + [0.6, 0.7, 0.8, 0.9, 1.0]
)
STATISTICS = ("memf", "avglev", "avglcs")

Outputs = Sequence[Sequence[Hashable]]


@dataclass(frozen=True)
class PaperDiagnostics:
    """``t_n``: the matched temperature T_n of each (reference, statistic), named
    "reference:statistic"; ``prompts`` and SUT run ``pairs`` compared (the protocol counts no
    divergences: those counts are NaN in the report)."""

    t_n: tuple[tuple[str, float], ...]
    prompts: int
    pairs: int

    def to_dict(self) -> dict[str, Any]:
        counts = {
            "n_trials": self.prompts,
            "pairs": self.pairs,
            "diverged": math.nan,
            "tokens_at_risk": math.nan,
        }
        return {"counts": counts, **{f"T_n[{k}]": v for k, v in self.t_n}, "prompts": self.prompts}


def prompt_statistics(groups: Sequence[Outputs], max_tokens: int) -> dict[str, np.ndarray]:
    """MEMF, AvgLev (/ max_tokens) and AvgLCS per prompt. Identical outputs are at distance 0
    under both statistics, so only pairs of distinct outputs are computed, each weighted by the
    product of their counts (the same means over all n(n−1)/2 pairs); all of them, for all
    prompts, in one vectorised dynamic programme."""
    pairs: list[tuple[Sequence[Hashable], Sequence[Hashable]]] = []
    owner: list[int] = []
    weight: list[float] = []
    npairs = np.zeros(len(groups))
    modal = np.zeros(len(groups))
    for p, g in enumerate(groups):
        counts = Counter(g)
        n = len(g)
        npairs[p] = n * (n - 1) / 2
        modal[p] = max(counts.values()) / n
        distinct = list(counts.items())
        for i, j in index_pairs(len(distinct)):
            pairs.append((distinct[i][0], distinct[j][0]))
            owner.append(p)
            weight.append(float(distinct[i][1] * distinct[j][1]))
    own = np.array(owner, dtype=int)
    wt = np.array(weight, dtype=float)
    n_g = len(groups)
    if pairs:
        seqs = pairs
        lev_d = edit_lengths(seqs, lcs=False)
        lcs = edit_lengths(seqs, lcs=True)
        mins = np.array([min(len(a), len(b)) for a, b in seqs], dtype=float)
        longest = np.array([max(len(a), len(b)) for a, b in seqs], dtype=float)
        d = np.where(mins > 0, 1 - lcs / np.maximum(mins, 1), (longest > 0) * 1.0)
    else:
        lev_d = d = np.zeros(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        lev = np.bincount(own, lev_d * wt, minlength=n_g) / npairs
        lcs_mean = np.bincount(own, d * wt, minlength=n_g) / npairs
    return {"memf": modal, "avglev": lev / max_tokens, "avglcs": lcs_mean}


def _outputs(trials: Sequence[Trial]) -> list[list[tuple[str, ...]]]:
    return [[r.tokens for r in t.runs] for t in trials]


def ks_argmin(
    sut: np.ndarray, refs: Mapping[float, np.ndarray]
) -> tuple[float, dict[float, float]]:
    """T_n = argmin_T KS(sut, ref_T), ties averaged; also the KS distance at each T."""
    ks = {t: float(st.ks_2samp(sut, v).statistic) for t, v in sorted(refs.items())}
    best = min(ks.values())
    tied = [t for t, d in ks.items() if math.isclose(d, best, rel_tol=0, abs_tol=1e-12)]
    return float(np.mean(tied)), ks


def estimate_paper(
    sut_trials: Sequence[Trial],
    reference_trials_by_T: Mapping[float, Sequence[Trial]],
    *,
    more_references: Mapping[str, Mapping[float, Sequence[Trial]]] | None = None,
    statistics: Sequence[str] = STATISTICS,
    max_tokens: int | None = None,
) -> EstimateResult[PaperDiagnostics]:
    """The paper's estimate. Each trial is one prompt with its runs (paper: SUT N = 100 at T = 0,
    references N = 32 per grid temperature ``PAPER_GRID``). ``max_tokens`` defaults to the
    longest output seen (the paper: the generation cap, 32)."""
    refs = {"reference": reference_trials_by_T, **(more_references or {})}
    sut = _outputs(sut_trials)
    if max_tokens is None:
        all_lens = [len(o) for g in sut for o in g] + [
            len(r.tokens) for m in refs.values() for ts in m.values() for t in ts for r in t.runs
        ]
        max_tokens = max(1, max(all_lens))
    sut_stats = prompt_statistics(sut, max_tokens)
    t_n: dict[str, float] = {}
    for name, by_t in refs.items():
        ref_stats = {t: prompt_statistics(_outputs(ts), max_tokens) for t, ts in by_t.items()}
        for s in statistics:
            t_n[f"{name}:{s}"], _ = ks_argmin(sut_stats[s], {t: v[s] for t, v in ref_stats.items()})
    diag = PaperDiagnostics(tuple(t_n.items()), len(sut_trials), sum(t.n_pairs for t in sut_trials))
    return EstimateResult(
        float(np.mean(list(t_n.values()))), math.nan, math.nan, math.nan, "paper", diag
    )
