"""Cross-divergence statistics against theory and simulations with known ground truth (fixed
seeds): the Wilson interval's coverage, the two-temperature hazard, and the compensator check of
pairs drawn from two ideal Boltzmann systems (and its power against the wrong temperatures)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from estimator.cross import boltzmann_compensator, cross_hazard, wilson_interval
from estimator.model import Run


def test_wilson_interval_known_values_and_edges() -> None:
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)  # the textbook value
    lo, hi = wilson_interval(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.7225, abs=1e-4)
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


@pytest.mark.parametrize("p", [0.02, 0.2, 0.5])
def test_wilson_interval_covers_at_about_the_nominal_level(p: float) -> None:
    rng = np.random.default_rng(7)
    n, reps = 40, 4000
    hits = 0
    for k in rng.binomial(n, p, size=reps):
        lo, hi = wilson_interval(int(k), n)
        hits += lo <= p <= hi
    assert 0.92 <= hits / reps <= 0.985, hits / reps


def test_cross_hazard_two_tokens_matches_the_closed_form() -> None:
    gap, ta, tb = 0.4, 0.3, 0.6
    lp = np.log(np.array([1.0, math.exp(-gap)]) / (1 + math.exp(-gap)))

    def sig(x: float) -> float:
        return 1.0 / (1.0 + math.exp(-x))

    same = sig(gap / ta) * sig(gap / tb) + sig(-gap / ta) * sig(-gap / tb)
    assert cross_hazard(lp.tolist(), ta, tb) == pytest.approx(1 - same, rel=1e-12)
    # equal temperatures: the hazard of two draws of one system, 1 / (2 cosh²(Δ / 2T))
    assert cross_hazard(lp.tolist(), ta, ta) == pytest.approx(
        1 / (2 * math.cosh(gap / (2 * ta)) ** 2), rel=1e-12
    )
    assert cross_hazard(lp.tolist(), 0.0, 0.0) == 0.0  # two greedy systems never differ
    assert cross_hazard(lp.tolist(), 0.0, tb) == pytest.approx(1 - sig(gap / tb), rel=1e-12)


def _world(seed: int, inputs: int, length: int, k: int) -> list[np.ndarray]:
    """Per input, a fixed logit row per position (the path does not change the logits: a
    simplification that keeps the check exact), with prompts of differing sensitivity."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(inputs):
        scale = rng.uniform(0.5, 4.0)
        out.append(rng.normal(0.0, scale, size=(length, k)))
    return out


def _draw(rng: np.random.Generator, z: np.ndarray, t: float) -> int:
    w = np.exp((z - z.max()) / t)
    return int(rng.choice(z.size, p=w / w.sum()))


def _pairs(world: list[np.ndarray], ta: float, tb: float, seed: int) -> list[tuple[Run, Run]]:
    rng = np.random.default_rng(seed)
    pairs = []
    for rows in world:
        toks_a, toks_b, tops = [], [], []
        for z in rows:
            lp = z - np.log(np.exp(z).sum())  # raw logprobs, as reported
            toks_a.append(f"t{_draw(rng, z, ta)}")
            toks_b.append(f"t{_draw(rng, z, tb)}")
            tops.append(tuple((f"t{i}", float(lp[i])) for i in range(z.size)))
        lps = tuple(dict(top)[tok] for tok, top in zip(toks_a, tops, strict=True))
        a = Run(tuple(toks_a), lps, tuple(tops), "", "length")
        b = Run(tuple(toks_b), None, None, "", "length")
        pairs.append((a, b))
    return pairs


def test_compensator_matches_divergences_of_two_boltzmann_systems() -> None:
    world = _world(3, inputs=400, length=12, k=6)
    check = boltzmann_compensator(_pairs(world, 0.3, 0.6, seed=11), 0.3, 0.6)
    assert check.pairs == 400 and check.positions > 400
    assert 0 < check.observed < 400
    assert abs(check.z) < 3.5, check


def test_compensator_rejects_the_wrong_temperatures() -> None:
    world = _world(5, inputs=400, length=12, k=6)
    pairs = _pairs(world, 0.3, 0.6, seed=13)
    assert boltzmann_compensator(pairs, 0.05, 0.1).z > 5  # too cold: far fewer expected
    assert boltzmann_compensator(pairs, 1.5, 3.0).z < -5  # too hot: far more expected
