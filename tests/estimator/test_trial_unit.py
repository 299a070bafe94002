"""The trial (one request and its replays) as the unit of independence (estimator/profile.py).

The bounded coverage check: in a clustered world (bench/worlds.py `reproduce-0.8`, four replays:
each replay reproduces its primary bit for bit with probability 0.8, prompts differ in noise scale
over a factor 10)
the old interval, which scores every position as an independent observation, demonstrably
under-covers the pseudo-true T*, and the interval with the trial-level design effect does not.
T* of each data set is the estimate on the pooled statistics of all the others (leave-one-out).
The long study with every world is bench/coverage_worlds.py (docs/coverage.md).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.worlds import WORLDS
from estimator.online import (
    LikelihoodCheckError,
    OnlineConfig,
    OnlineEstimator,
    SufficientStats,
    checked_nll,
    estimate_from_stats,
)
from estimator.profile import MIN_DESIGN_EFFECT, design_effect, grid_profile, scores
from estimator.stats import clustered_hazard, divergence_hazard

GRID = OnlineConfig().grid
FLAT = OnlineConfig(half_life_trials=1e15)


def _data_set(world: str, seed: int, trials: int, runs: int) -> SufficientStats:
    rng = np.random.default_rng([seed, runs, trials])
    est = OnlineEstimator(FLAT)
    for p in range(trials):
        est.update(WORLDS[world].trial(rng, p, runs=runs, length=32))
    return est.stats()


def test_clustered_world_naive_undercovers_adjusted_covers() -> None:
    sets = [_data_set("reproduce-0.8", s, trials=40, runs=5) for s in range(40)]
    total = np.sum([np.asarray(s.nll) for s in sets], axis=0)
    naive = adjusted = 0
    effects = []
    for st in sets:
        t_star = grid_profile(GRID, total - np.asarray(st.nll), events=1e9).estimate
        nll = np.asarray(st.nll)
        old = grid_profile(GRID, nll, events=st.scored_diverged)  # pairs, positions independent
        new = grid_profile(
            GRID,
            nll,
            events=st.scored_diverged_trials,
            score_sq=np.asarray(st.squares()),
            trials=st.trials,
        )
        naive += old.lower <= t_star <= old.upper
        adjusted += new.lower <= t_star <= new.upper
        effects.append(new.design_effect)
        assert new.lower <= old.lower and new.upper >= old.upper  # k >= 1 only widens
    assert naive <= 30, naive  # ≤ 75 % of 40: the old interval under-covers (measured 24/40)
    assert adjusted >= 36, adjusted  # ≥ 90 % (measured 37/40)
    assert np.median(effects) > 2  # the clustering is real: the variance is over twice the model's


def test_boltzmann_design_effect_near_one() -> None:
    """Where the model holds (ideal sampling, independent trials) k stays near 1."""
    st = _data_set("boltzmann", 7, trials=400, runs=3)
    p = grid_profile(
        GRID,
        np.asarray(st.nll),
        events=st.scored_diverged_trials,
        score_sq=np.asarray(st.squares()),
        trials=st.trials,
    )
    assert 1.0 <= p.design_effect < 1.35
    assert p.lower <= 0.05 <= p.upper


def test_design_effect_reads_the_sandwich() -> None:
    """k is the sandwich ratio: duplicating every trial into one unit doubles it."""
    rng = np.random.default_rng(3)
    est = OnlineEstimator(FLAT)
    comps = [
        est.update(WORLDS["reproduce-0.8"].trial(rng, p, runs=3, length=32)) for p in range(300)
    ]
    nll = np.sum([c.nll for c in comps], axis=0)
    sq = np.sum([c.score_sq for c in comps], axis=0)
    i = int(np.argmin(nll))
    h = math.log(GRID[1] / GRID[0])
    k1 = design_effect(nll, sq, i, h, 300)
    # every trial duplicated: the curve doubles, and each unit (a trial and its copy) has twice
    # the score (squares x4) over the same 300 units: k doubles exactly
    k2 = design_effect(2 * nll, 4 * sq, i, h, 300)
    assert k1 > 1.5
    assert k2 == pytest.approx(2 * k1, rel=1e-9)
    assert design_effect(nll, sq, 0, h, 300) == MIN_DESIGN_EFFECT  # an edge point: the floor
    assert design_effect(nll, sq, i, h, 1) == MIN_DESIGN_EFFECT  # one trial: cannot be read


def test_scores_are_slopes_in_log_t() -> None:
    f = np.log(GRID) ** 2
    np.testing.assert_allclose(scores(GRID, f)[1:-1], 2 * np.log(GRID)[1:-1], rtol=1e-9)


def test_negative_nll_is_an_error_not_clipped() -> None:
    good = np.array([0.0, 1.5, 3.0])
    assert checked_nll(good) is good
    with pytest.raises(LikelihoodCheckError, match="grid point 1"):
        checked_nll(np.array([0.0, -1e-3, 2.0]))
    with pytest.raises(LikelihoodCheckError):
        checked_nll(np.array([0.0, np.nan, 2.0]))


def test_stats_pool_scores_and_roundtrip() -> None:
    a = _data_set("prompts", 1, trials=30, runs=2)
    b = _data_set("prompts", 2, trials=30, runs=2)
    pooled = a + b
    np.testing.assert_allclose(pooled.squares(), np.add(a.squares(), b.squares()), rtol=1e-12)
    assert pooled.scored_trials == a.scored_trials + b.scored_trials == 60
    again = SufficientStats.from_dict(pooled.to_dict())
    assert again == pooled
    snap = estimate_from_stats(pooled)
    assert snap.design_effect >= 1.0 and snap.trials == 60
    old = SufficientStats.from_dict({"grid": list(a.grid), "nll": list(a.nll)})
    assert old.squares() == (0.0,) * len(a.nll)  # statistics without squares read as zeros


def test_decayed_snapshot_matches_undecayed_without_decay() -> None:
    """With no decay the live snapshot and the pooled statistics give the same interval."""
    rng = np.random.default_rng(11)
    est = OnlineEstimator(FLAT)
    for p in range(120):
        est.update(WORLDS["reproduce-0.5"].trial(rng, p, runs=3, length=32))
    live, pooled = est.snapshot(), estimate_from_stats(est.stats())
    # plain floats: /tbg serialises them with orjson, which refuses numpy scalars
    assert live.design_effect > 1 and type(live.design_effect) is float
    assert all(type(x) is float for x in (live.lower, live.upper, live.hazard_upper))
    assert live.lower == pytest.approx(pooled.lower, rel=1e-6)
    assert live.upper == pytest.approx(pooled.upper, rel=1e-6)
    assert live.design_effect == pytest.approx(pooled.design_effect, rel=1e-6)


def test_clustered_hazard() -> None:
    # one divergence per diverged trial, short trials: the Poisson case, Garwood's interval
    d = np.array([1, 0, 0, 1, 0, 1] * 10, dtype=float)
    e = np.full(d.size, 30.0)
    hz = clustered_hazard(
        d.sum(),
        e.sum(),
        diverged_sq=float((d * d).sum()),
        diverged_x_risk=float((d * e).sum()),
        risk_sq=float((e * e).sum()),
    )
    plain = divergence_hazard(d.sum(), e.sum())
    assert hz.estimate == plain.estimate
    assert hz.upper <= plain.upper * 1.0001  # D_eff capped at D: never narrower... nor wider here
    # every divergence comes as a block of 4 (one odd run of five): 4x fewer independent events
    d4 = 4 * d
    hz4 = clustered_hazard(
        d4.sum(),
        e.sum(),
        diverged_sq=float((d4 * d4).sum()),
        diverged_x_risk=float((d4 * e).sum()),
        risk_sq=float((e * e).sum()),
    )
    naive4 = divergence_hazard(d4.sum(), e.sum())
    # the block law makes the count overdispersed (variance twice the Poisson's here): wider
    assert hz4.upper - hz4.estimate > 1.3 * (naive4.upper - naive4.estimate)
    assert hz4.estimate - hz4.lower > 1.3 * (naive4.estimate - naive4.lower)
    zero = clustered_hazard(
        0.0, 600.0, diverged_sq=0, diverged_x_risk=0, risk_sq=0, pairs_per_trial=10
    )
    assert zero.upper == pytest.approx(divergence_hazard(0.0, 60.0).upper)


def test_rules_use_the_estimators_floor() -> None:
    from tests.monitoring.common import rules_gen

    assert rules_gen().MIN_DESIGN_EFFECT == MIN_DESIGN_EFFECT
