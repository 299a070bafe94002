"""`thermostat` samples softmax(z/T); `noise` flips near-ties at the rate Φ(−Δ/(σ√2)) predicts.

Both draw the first token of a completions prompt with a near-tie (max_tokens=1), a bounded
number of times, and judge the observed counts against the prediction from the raw logprobs.

Two-token flip probability in `noise` mode: the server picks argmax(z + σε), ε ~ N(0, I). With top-1
and top-2 logits z₁ − z₂ = Δ, the pick flips to token 2 when σ(ε₂ − ε₁) > Δ; ε₂ − ε₁ ~ N(0, 2), so
P(flip) = P(N(0,1) > Δ/(σ√2)) = Φ(−Δ/(σ√2)). Other tokens (≥ 2 nats further down here) add a
negligible amount; the test also computes the exact multi-token prediction by Monte Carlo over the
reported top-20 logits and checks the two agree.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pytest
from scipy import stats

from reference.launch import ReferenceProcess
from tests.reference._runs import NEAR_TIE_PROMPT, NOISE_SIGMA, THERMOSTAT_T, client

pytestmark = pytest.mark.reference

DRAWS = 120
ALPHA = 1e-3  # false-failure rate per test


async def _draws(base_url: str, n: int) -> list[tuple[str, dict[str, float]]]:
    """n temperature-0 first tokens with their reported top-20 logprobs (4 in flight)."""
    sem = asyncio.Semaphore(4)
    async with client(base_url) as api:

        async def one() -> tuple[str, dict[str, float]]:
            async with sem:
                resp = await api.completions.create(
                    model="smollm2",
                    prompt=NEAR_TIE_PROMPT,
                    max_tokens=1,
                    temperature=0,
                    logprobs=20,
                )
            lp = resp.choices[0].logprobs
            assert lp is not None and lp.tokens and lp.top_logprobs
            return lp.tokens[0], dict(lp.top_logprobs[0])

        return list(await asyncio.gather(*(one() for _ in range(n))))


def _top2(top: dict[str, float]) -> tuple[str, str, float]:
    (t1, l1), (t2, l2) = sorted(top.items(), key=lambda kv: -kv[1])[:2]
    return t1, t2, l1 - l2


def test_thermostat_frequencies_match_softmax_z_over_t(
    thermostat_server: ReferenceProcess,
) -> None:
    draws = asyncio.run(_draws(thermostat_server.base_url, DRAWS))
    raw = draws[0][1]
    assert all(top == raw for _, top in draws), "raw logprobs must not depend on the draw"
    t1, t2, _ = _top2(raw)
    counts = Counter(tok if tok in (t1, t2) else "other" for tok, _ in draws)
    observed = [counts[t1], counts[t2], counts["other"]]

    def expected(temp: float) -> list[float]:
        # softmax(z/T) from raw logprobs l = z − logZ: p ∝ exp(l/T). The tail beyond the top 20
        # adds ≤ p₂₀^(1/T−1)·(1−Σp) to the normaliser at T ≤ 1 (< 1 % here).
        weights = {t: math.exp(lp / temp) for t, lp in raw.items()}
        if temp == 1.0:
            weights["<tail>"] = max(0.0, 1.0 - sum(weights.values()))
        total = sum(weights.values())
        p1, p2 = weights[t1] / total, weights[t2] / total
        return [DRAWS * p1, DRAWS * p2, DRAWS * (1.0 - p1 - p2)]

    p_value = stats.chisquare(observed, expected(THERMOSTAT_T)).pvalue
    p_wrong = stats.chisquare(observed, expected(1.0)).pvalue  # power check: T=1 must be rejected
    print(
        f"\nthermostat T={THERMOSTAT_T}: observed {observed}, expected "
        f"{[round(e, 1) for e in expected(THERMOSTAT_T)]}, p={p_value:.3g}; T=1 p={p_wrong:.2g}"
    )
    assert counts[t2] > 0, "a temperature-0 request was served greedily"
    assert p_value > ALPHA
    assert p_wrong < ALPHA


def _mc_flip_probability(logits: Sequence[float], sigma: float, n: int = 200_000) -> float:
    rng = np.random.default_rng(12345)
    z = np.asarray(logits, dtype=np.float64)
    picks = np.argmax(z + sigma * rng.standard_normal((n, z.size)), axis=1)
    return float(np.mean(picks != int(np.argmax(z))))


def test_noise_flips_near_ties_at_the_predicted_rate(
    noise_server: ReferenceProcess, serial_server: ReferenceProcess
) -> None:
    clean = asyncio.run(_draws(serial_server.base_url, 1))[0][1]
    t1, t2, delta = _top2(clean)
    predicted = stats.norm.cdf(-delta / (NOISE_SIGMA * math.sqrt(2.0)))
    exact = _mc_flip_probability(list(clean.values()), NOISE_SIGMA)
    assert abs(predicted - exact) < 0.02, "two-token approximation should hold on this prompt"

    draws = asyncio.run(_draws(noise_server.base_url, DRAWS))
    flips = sum(tok != t1 for tok, _ in draws)
    p_value = stats.binomtest(flips, DRAWS, predicted).pvalue
    p_silent = stats.binomtest(flips, DRAWS, 0.5 * predicted).pvalue  # power: half the rate fails
    # Reported logprobs are log_softmax(z + σε): the top-1/top-2 gap jitters with std σ√2.
    gaps = [top[t1] - top[t2] for _, top in draws if t1 in top and t2 in top]
    jitter = float(np.std(gaps, ddof=1)) / math.sqrt(2.0)
    print(
        f"\nnoise σ={NOISE_SIGMA}: Δ={delta:.4f}, flips {flips}/{DRAWS} "
        f"(Φ predicts {predicted:.3f}, MC {exact:.3f}), p={p_value:.3g}; jitter σ̂={jitter:.3f}"
    )
    assert p_value > ALPHA
    assert p_silent < 0.05
    assert len(gaps) > DRAWS // 2
    assert 0.75 * NOISE_SIGMA < jitter < 1.25 * NOISE_SIGMA
