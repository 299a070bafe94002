"""`estimate_survival` (science.md §3b, pair survival form) on the ideal simulator (fixed seeds)."""

import numpy as np
import pytest

from estimator.likelihood import estimate_likelihood
from estimator.simulate import GapModel, simulate_pairs
from estimator.survival import estimate_survival, survival_steps


@pytest.mark.parametrize("temp", [0.02, 0.1])
def test_survival_recovers_temperature_and_covers(temp: float) -> None:
    """k = vocabulary, so the top-k hazard is the full hazard. 12 data sets of 100 pairs (about
    20 divergences each at T = 0.02, so T̂/T has a spread of about 20 %): median T̂/T within 10 %,
    the 95 % interval covers the truth in at least 10 of them, and all the data pooled give an
    interval that covers the truth with T̂ within 6 %."""
    rng = np.random.default_rng(31)
    ratios, covered, trials = [], 0, []
    for _ in range(12):
        sim = simulate_pairs(
            rng, pairs=100, length=64, temperature=temp, gaps=GapModel(vocab=8), k=8
        )
        trials.extend(sim.trials())
        r = estimate_survival(sim.trials())
        assert r.method == "survival" and r.lower < r.estimate < r.upper
        ratios.append(r.estimate / temp)
        covered += r.lower <= temp <= r.upper
    assert abs(float(np.median(ratios)) - 1) < 0.10
    assert covered >= 10
    pooled = estimate_survival(trials)
    assert pooled.lower <= temp <= pooled.upper
    assert abs(pooled.estimate / temp - 1) < 0.06


def test_survival_hazard_matches_two_token_formula() -> None:
    """For two tokens with gap Δ, h = 1/(2 cosh²(Δ/2T)) (science.md §3b)."""
    from estimator.survival import SurvivalSteps

    delta, temp = 0.3, 0.2
    steps = SurvivalSteps(np.array([[0.0, -delta]]), np.array([True]))
    h = 1 / (2 * np.cosh(delta / (2 * temp)) ** 2)
    assert steps.loglik(temp) == pytest.approx(np.log(h), rel=1e-12)
    steps = SurvivalSteps(np.array([[0.0, -delta]]), np.array([False]))
    assert steps.loglik(temp) == pytest.approx(np.log1p(-h), rel=1e-12)


def test_survival_agrees_with_trie_likelihood_and_noiseless_bound() -> None:
    sim = simulate_pairs(np.random.default_rng(5), pairs=150, length=64, temperature=0.05)
    s = estimate_survival(sim.trials())
    t = estimate_likelihood(sim.trials())
    assert s.lower < t.estimate < s.upper  # the two forms agree within the survival interval
    quiet = simulate_pairs(np.random.default_rng(5), pairs=50, length=64)
    steps = survival_steps(quiet.trials())
    assert not steps.failed.any()
    q = estimate_survival(quiet.trials())
    assert q.estimate == 0.0 and q.lower == 0.0 and 0 < q.upper < 0.05
