"""Likelihood estimator against simulated ground truth (fixed seeds)."""

import numpy as np
import pytest

from estimator._trie import trie_comparison
from estimator.compare import Nodes, compare_trial
from estimator.likelihood import Likelihood, estimate_likelihood, fit
from estimator.model import Trial
from estimator.simulate import FLAT_TAIL, GapModel, simulate_pairs


@pytest.mark.parametrize("temp", [0.005, 0.02, 0.1])
def test_trial_path_equals_array_path(temp: float) -> None:
    """The Trial/trie path gives exactly the ideal-system likelihood built from the arrays, so the
    fast array path below validates the estimator that the proxy runs."""
    sp = simulate_pairs(np.random.default_rng(10), pairs=40, length=128, temperature=temp)
    trials = sp.trials()
    b = Likelihood(sp.ideal_nodes())
    for compare in (trie_comparison, compare_trial):  # the general trie walk, the public entry
        nodes = Nodes.concat([n for t in trials if (n := compare(t).nodes) is not None])
        a = Likelihood(nodes)
        for t in (temp / 3, temp, 3 * temp):
            assert a.loglik(1 / t) == pytest.approx(b.loglik(1 / t), rel=1e-9)
    r = estimate_likelihood(trials)
    assert r.method == "likelihood" and r.lower < r.estimate < r.upper
    assert r.diagnostics.counts.diverged == int((sp.first < 128).sum())


@pytest.mark.parametrize("temp", [0.005, 0.02, 0.1])
def test_median_within_10_percent(temp: float) -> None:
    rng = np.random.default_rng(int(temp * 1e4))
    est = [
        fit(simulate_pairs(rng, pairs=200, length=128, temperature=temp).ideal_nodes()).estimate
        for _ in range(25)
    ]
    assert abs(np.median(est) / temp - 1) < 0.10


def test_interval_coverage_400_datasets() -> None:
    rng = np.random.default_rng(7)
    temp, gaps = 0.02, GapModel(vocab=8)  # small vocabulary: same statistics, faster simulation
    hits = 0
    for _ in range(400):
        sim = simulate_pairs(rng, pairs=200, length=128, temperature=temp, gaps=gaps)
        r = fit(sim.ideal_nodes())
        hits += r.lower <= temp <= r.upper
    assert 0.93 <= hits / 400 <= 0.97


def test_flat_tail_is_not_biased() -> None:
    """A tail holding much of the T=1 mass beyond the top-5 (science.md: check flat
    distributions): scoring conditionally on the reported tokens stays unbiased."""
    rng = np.random.default_rng(3)
    temp = 0.1
    res = [
        fit(
            simulate_pairs(
                rng, pairs=200, length=64, temperature=temp, gaps=FLAT_TAIL
            ).ideal_nodes()
        ).estimate
        for _ in range(15)
    ]
    assert abs(np.median(res) / temp - 1) < 0.10


def test_noiseless_estimate_zero_upper_bound_shrinks() -> None:
    trials = simulate_pairs(np.random.default_rng(4), pairs=400, length=128).trials()
    uppers = []
    for n in (25, 100, 400):  # nested data sets: more data can only lower the bound
        r = estimate_likelihood(trials[:n])
        assert r.estimate == 0.0 and r.lower == 0.0 and r.diagnostics.counts.diverged == 0
        assert 0 < r.upper < 1
        uppers.append(r.upper)
    assert uppers[0] > uppers[1] > uppers[2]
    assert uppers[2] < uppers[0] / 4  # roughly 1/n


def test_single_runs_are_never_scored_against_their_own_logprobs() -> None:
    sp = simulate_pairs(np.random.default_rng(5), pairs=2, length=16, temperature=0.1)
    t = sp.trials()[0]
    assert compare_trial(Trial("x", t.runs[:1])).nodes is None
    nodes = compare_trial(t).nodes
    assert nodes is not None
    assert nodes.weights.size == min(int(sp.first[0]) + 1, 16)  # only nodes with both runs
