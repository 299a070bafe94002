"""Cross-divergence: how often and how early a candidate endpoint's temperature-0 answer differs
from a baseline endpoint's answer to the same prompt, and what the Boltzmann model predicts.

Pairs are (baseline run, candidate run) of one prompt, compared with the conventions of
`estimator.comparison.pair_divergence` (first differing token; a run that stopped while the other
went on diverged there; otherwise censored at the common length). The pairs of one prompt share
runs, and prompts differ in how sensitive they are, so **the prompt is the unit of independence**
in every interval here:

- the rate (diverged pairs / pairs) gets a Clopper–Pearson interval on the prompt-level effective
  count: n_eff = r(1 − r) / Var̂(r), Var̂ the cluster-robust (ratio-estimator) variance over
  prompts with the small-sample factor P/(P − 1); when nothing (or everything) differed the
  variance says nothing and each prompt counts once (n_eff = P);
- the per-token hazard of a first difference uses `estimator.stats.clustered_hazard`.

Boltzmann prediction. If both endpoints were ideal samplers at temperatures T_b and T_c of the same
logits z, two answers that agree up to position s part there with probability
h_s = 1 − Σ_i softmax(z/T_b)_i · softmax(z/T_c)_i (the two draws are independent; T = 0 is the
argmax, ties broken alike). Summed over the positions each pair was at risk, the hazards give the expected number of
first differences E; the observed count O minus E has mean 0 under the model (a discrete-time
compensator). z is taken as the mean of the two runs' reported top-k logprobs over the union of
their tokens, the tail beyond it dropped (`estimator.nodes.union_node`, as `estimator.survival`
does); an end-of-answer difference is not scored. O ≫ E: the candidate answers differently beyond
what the two temperatures explain (another model, kernel or checkpoint); O ≈ E: the difference is
the randomness of the two endpoints.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as st

from estimator.comparison import pair_divergence
from estimator.model import Run
from estimator.nodes import union_node
from estimator.stats import clustered_hazard
from measure.store import Record


@dataclass(frozen=True)
class CrossDivergence:
    """Cross pairs of the prompts both endpoints answered (see the module docstring)."""

    prompts: int
    pairs: int
    diverged_pairs: int
    rate: float | None  # diverged pairs / pairs
    rate_lower: float | None
    rate_upper: float | None
    prompts_differing: int  # prompts with at least one diverged pair
    first_divergence_median: float | None  # token index of the first difference, diverged pairs
    first_divergence_min: int | None
    hazard: float | None  # per token compared
    hazard_lower: float | None
    hazard_upper: float | None
    level: float


def clustered_proportion(
    diverged: Sequence[float], pairs: Sequence[float], level: float
) -> tuple[float, float, float]:
    """(rate, lower, upper): Σd / Σn with the prompt as the unit (module docstring)."""
    d = np.asarray(diverged, dtype=float)
    n = np.asarray(pairs, dtype=float)
    big_n, big_d, p = float(n.sum()), float(d.sum()), int(n.size)
    if big_n <= 0:
        raise ValueError("no cross pairs")
    r = big_d / big_n
    n_eff = float(p)
    if 0 < big_d < big_n and p > 1:
        var = float(((d - r * n) ** 2).sum()) / big_n**2 * p / (p - 1)
        n_eff = big_n if var <= 0 else min(big_n, r * (1 - r) / var)
    x = r * n_eff
    a = (1 - level) / 2
    lo = 0.0 if x <= 0 else float(st.beta.ppf(a, x, n_eff - x + 1))
    hi = 1.0 if x >= n_eff else float(st.beta.ppf(1 - a, x + 1, n_eff - x))
    return r, lo, hi


def _by_prompt(records: Iterable[Record]) -> dict[str, list[Run]]:
    out: dict[str, list[tuple[int, Run]]] = defaultdict(list)
    for rec in records:
        out[rec.key.prompt].append((rec.key.run, rec.run()))
    return {k: [r for _, r in sorted(v, key=lambda x: x[0])] for k, v in out.items()}


def cross_divergence(
    baseline: Iterable[Record], candidate: Iterable[Record], *, level: float
) -> CrossDivergence:
    """The cross pairs of every prompt answered by both sides."""
    b, c = _by_prompt(baseline), _by_prompt(candidate)
    common = sorted(set(b) & set(c))
    d_p, n_p, e_p, positions = [], [], [], []
    for pid in common:
        d = e = n = 0
        for x in b[pid]:
            for y in c[pid]:
                k, div, risk = pair_divergence(x, y)
                n += 1
                d += div
                e += risk
                if div:
                    positions.append(k)
        d_p.append(d)
        n_p.append(n)
        e_p.append(e)
    pairs, diverged = int(sum(n_p)), int(sum(d_p))
    if not pairs:
        return CrossDivergence(len(common), 0, 0, *(None,) * 3, 0, None, None, *(None,) * 3, level)
    rate, lo, hi = clustered_proportion(d_p, n_p, level)
    dd, ee = np.array(d_p, float), np.array(e_p, float)
    hz = clustered_hazard(
        float(dd.sum()),
        float(ee.sum()),
        diverged_sq=float((dd * dd).sum()),
        diverged_x_risk=float((dd * ee).sum()),
        risk_sq=float((ee * ee).sum()),
        pairs_per_trial=pairs / len(common),
        level=level,
    )

    def fin(x: float) -> float | None:
        return x if math.isfinite(x) else None

    return CrossDivergence(
        prompts=len(common),
        pairs=pairs,
        diverged_pairs=diverged,
        rate=rate,
        rate_lower=lo,
        rate_upper=hi,
        prompts_differing=sum(x > 0 for x in d_p),
        first_divergence_median=float(np.median(positions)) if positions else None,
        first_divergence_min=min(positions) if positions else None,
        hazard=fin(hz.estimate),
        hazard_lower=fin(hz.lower),
        hazard_upper=fin(hz.upper),
        level=level,
    )


def tempered(z: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(z / T) over the reported tokens; T = 0 is greedy: the argmax, a tie broken the
    same way on both sides (two greedy copies of one model never part on a tie)."""
    if temperature <= 0:
        out: np.ndarray = np.zeros(z.size)
        out[int(np.argmax(z))] = 1.0
        return out
    p = np.exp((z - z.max()) / temperature)
    out = p / p.sum()
    return out


@dataclass(frozen=True)
class BoltzmannCheck:
    """Observed first differences of the scored cross pairs against the Boltzmann model's
    expectation at the two temperatures (module docstring); ``z`` = (O − E)/√V with V the larger
    of the prompt-clustered Σ_p (O_p − E_p)² · P/(P − 1) and the model's Σ h(1 − h); None when
    the model expects no difference (E = 0) and some are seen."""

    t_baseline: float
    t_candidate: float
    pairs: int  # cross pairs scored (both runs report top-k logprobs)
    observed: int
    expected: float
    z: float | None
    # "consistent" (|z| within the level's normal quantile), "more than predicted" (the candidate
    # answers differently beyond both endpoints' randomness), "fewer than predicted"
    reading: str


def _pair_hazards(a: Run, b: Run, t_a: float, t_b: float) -> tuple[np.ndarray, bool]:
    """Per position at risk, h_s; and whether the pair's scored difference happened."""
    pos, div, _ = pair_divergence(a, b)
    n = min(len(a.tokens), len(b.tokens))
    failed = div and pos < n  # a difference at the end (one run stopped) is not scored
    stop = pos + 1 if failed else n
    ta, tb = a.top_logprobs, b.top_logprobs
    assert ta is not None and tb is not None
    hs = np.empty(stop)
    for s in range(stop):
        z, _, _ = union_node((ta[s], tb[s]), (a.tokens[s], b.tokens[s]))
        hs[s] = 1.0 - float(tempered(z, t_a) @ tempered(z, t_b))
    return np.clip(hs, 0.0, 1.0), failed


def boltzmann_check(
    baseline: Iterable[Record],
    candidate: Iterable[Record],
    t_baseline: float,
    t_candidate: float,
    *,
    level: float = 0.95,
) -> BoltzmannCheck | None:
    """None when no cross pair reports top-k logprobs on both sides."""
    b, c = _by_prompt(baseline), _by_prompt(candidate)
    o_p, e_p = [], []
    model_var = 0.0
    pairs = 0
    for pid in sorted(set(b) & set(c)):
        o = 0
        e = 0.0
        for x in b[pid]:
            for y in c[pid]:
                if not (x.has_top_logprobs and y.has_top_logprobs):
                    continue
                hs, failed = _pair_hazards(x, y, t_baseline, t_candidate)
                pairs += 1
                o += failed
                e += float(hs.sum())
                model_var += float((hs * (1 - hs)).sum())
        o_p.append(o)
        e_p.append(e)
    if not pairs:
        return None
    resid = np.array(o_p, float) - np.array(e_p, float)
    p = resid.size
    robust = float((resid**2).sum()) * (p / (p - 1) if p > 1 else 1.0)
    var = max(robust, model_var)
    big_o, big_e = int(sum(o_p)), float(sum(e_p))
    if big_e <= 0:  # the model allows no difference: any one seen rejects it
        z: float | None = 0.0 if big_o == 0 else None
    else:
        z = (big_o - big_e) / math.sqrt(var)
    crit = float(st.norm.ppf(0.5 + level / 2))
    if z is None or z > crit:
        reading = "more than predicted"
    elif z < -crit:
        reading = "fewer than predicted"
    else:
        reading = "consistent"
    return BoltzmannCheck(t_baseline, t_candidate, pairs, big_o, big_e, z, reading)
