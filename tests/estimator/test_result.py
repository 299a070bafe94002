"""One result shape: every estimator and the online snapshot return an `EstimateResult` with its
level, a typed frozen diagnostics record and NaN for missing numbers (fixed seeds)."""

import dataclasses
import math

import numpy as np
import pytest

from estimator.compare import compare_trial
from estimator.hazard import estimate_hazard, reference_curve_from_trials
from estimator.jitter import estimate_jitter
from estimator.likelihood import estimate_likelihood, fit
from estimator.model import Run, Trial
from estimator.online import OnlineConfig, OnlineEstimator, OnlineSnapshot, estimate_from_stats
from estimator.paper import PAPER_GRID, estimate_paper
from estimator.result import ConfidenceInterval, EstimateResult
from estimator.simulate import prompt_trials, simulate_pairs, simulate_prompts
from estimator.survival import estimate_survival


def _trials(seed: int, temperature: float, pairs: int = 40) -> list[Trial]:
    rng = np.random.default_rng(seed)
    return simulate_pairs(rng, pairs=pairs, length=48, temperature=temperature).trials()


def test_every_estimator_returns_the_one_shape_at_its_level() -> None:
    trials = _trials(1, 0.03)
    refs = {t: _trials(2 + i, t) for i, t in enumerate((0.01, 0.03, 0.1))}
    results = [
        estimate_likelihood(trials, level=0.9),
        fit(
            simulate_pairs(
                np.random.default_rng(3), pairs=40, length=48, temperature=0.03
            ).ideal_nodes(),
            level=0.9,
        ),
        estimate_jitter(trials, level=0.9),
        estimate_survival(trials, level=0.9),
        estimate_hazard(trials, reference_curve_from_trials("sim", refs), level=0.9),
    ]
    for r in results:
        assert isinstance(r, EstimateResult) and r.level == 0.9
        assert r.lower <= r.estimate <= r.upper
        ci = r.confidence_interval()
        assert ci == ConfidenceInterval(r.lower, r.upper, 0.9) == r.confidence_interval(0.9)
        with pytest.raises(ValueError, match=r"level 0\.9"):
            r.confidence_interval(0.95)  # computed at one level: never silently rescaled
        with pytest.raises(dataclasses.FrozenInstanceError):
            r.diagnostics.counts = None  # type: ignore[misc]
        d = r.to_dict()
        assert list(d)[:5] == ["estimate", "lower", "upper", "method", "level"]
        assert d["estimate"] == r.estimate and isinstance(d["diagnostics"], dict)
        assert "counts" not in d["diagnostics"]


def test_report_keeps_its_keys() -> None:
    """`tbg measure` writes `to_dict()`: the count keys next to the estimate, the method's
    diagnostics by name (report.md and `tbg sweep` read these)."""
    trials = _trials(4, 0.03)
    lik = estimate_likelihood(trials).to_dict()
    assert {"n_trials", "pairs", "diverged", "tokens_at_risk"} <= set(lik)
    assert lik["n_trials"] == len(trials) and lik["pairs"] == len(trials)
    assert {"design_effect", "diverged_trials", "scored_trials", "loglik_max", "unit"} <= set(
        lik["diagnostics"]
    )
    assert lik["diagnostics"]["unit"] == "trial"
    jit = estimate_jitter(trials).to_dict()
    assert {"sigma_gap", "p_identical", "check_z"} <= set(jit["diagnostics"])


def test_missing_is_nan() -> None:
    z, sut = simulate_prompts(
        np.random.default_rng(5), prompts=6, runs=8, length=6, temperature=0.05
    )
    refs = {
        t: prompt_trials(
            simulate_prompts(
                np.random.default_rng(6), prompts=6, runs=6, length=6, temperature=t, logits=z
            )[1]
        )
        for t in PAPER_GRID[:8]
    }
    paper = estimate_paper(prompt_trials(sut), refs)
    assert math.isnan(paper.lower) and math.isnan(paper.upper) and math.isnan(paper.level)
    assert all(math.isnan(x) for x in dataclasses.astuple(paper.confidence_interval(0.95)))
    assert len(paper.diagnostics.t_n) == 3
    assert math.isnan(paper.to_dict()["diverged"])  # the protocol counts no divergences
    quiet = estimate_likelihood(
        simulate_pairs(np.random.default_rng(7), pairs=20, length=32).trials()
    )
    assert quiet.estimate == 0.0 and math.isnan(quiet.diagnostics.loglik_max)
    text = Trial(
        "t", (Run(("a", "b"), None, None, "ab", "stop"), Run(("a", "c"), None, None, "ac", "stop"))
    )
    est = OnlineEstimator()
    est.update(text)
    s = est.snapshot()
    assert s.method == "hazard-only" and math.isnan(s.estimate)
    assert math.isnan(s.jitter_sigma) and math.isnan(s.p_identical)
    assert math.isnan(s.jitter_temperature)


def test_online_snapshot_is_an_estimate_result_with_its_level() -> None:
    trials = _trials(8, 0.03, pairs=60)
    est = OnlineEstimator(OnlineConfig(level=0.9))
    for t in trials:
        est.update(t)
    s = est.snapshot()
    assert isinstance(s, OnlineSnapshot) and isinstance(s, EstimateResult)
    assert s.level == 0.9 and s.confidence_interval() == ConfidenceInterval(s.lower, s.upper, 0.9)
    d = s.diagnostics
    # the older flat names read the diagnostics
    assert (s.trials, s.pairs, s.diverged, s.tokens_at_risk) == (
        d.counts.trials,
        d.counts.pairs,
        d.counts.diverged,
        d.counts.tokens_at_risk,
    )
    assert s.trials == len(trials) and s.pairs == len(trials)
    assert (s.hazard, s.hazard_lower, s.hazard_upper) == (
        d.hazard.estimate,
        d.hazard.lower,
        d.hazard.upper,
    )
    assert s.design_effect == d.design_effect and s.jitter_sigma == d.jitter_sigma
    pooled = estimate_from_stats(est.stats(), level=0.9)
    assert pooled.level == 0.9 and pooled.pairs == s.pairs


def test_online_folds_a_plain_comparison_as_its_own() -> None:
    """`add` scores a `compare_trial` comparison itself: the same state as `update`."""
    trials = _trials(9, 0.05)
    a, b = OnlineEstimator(), OnlineEstimator()
    for t in trials:
        a.update(t)
        b.add(compare_trial(t))
    sa, sb = a.snapshot(), b.snapshot()
    assert (sa.estimate, sa.lower, sa.upper) == (sb.estimate, sb.lower, sb.upper)
    np.testing.assert_array_equal(a.stats().nll, b.stats().nll)
    c = a.compare(trials[0])
    assert c.nodes is None and c.jitter_gaps.size == 0  # used up: not shipped on
    assert c.nll.size == OnlineConfig().grid_size and (c.nll >= 0).all()


def test_every_interval_reads_the_same_way() -> None:
    """The grid profile, the hazard and the bootstrap record their level like the estimators."""
    from estimator.likelihood import GridLoglik, bootstrap_prompts, trial_nodes
    from estimator.nodes import Nodes
    from estimator.profile import grid_profile
    from estimator.stats import divergence_hazard

    grid = OnlineConfig().grid
    nodes = list(trial_nodes(_trials(10, 0.03)).parts)
    p = grid_profile(grid, GridLoglik(grid).nll(Nodes.concat(nodes)), events=5.0, level=0.9)
    h = divergence_hazard(5, 1000, level=0.9)
    b = bootstrap_prompts(nodes, resamples=30, level=0.9)
    for r in (p, h, b):
        assert r.confidence_interval() == ConfidenceInterval(r.lower, r.upper, 0.9)
        with pytest.raises(ValueError, match=r"computed at level 0\.9"):
            r.confidence_interval(0.95)
    assert set(b.to_dict()) == {"lower", "upper", "sd_log", "zero_share", "resamples"}
