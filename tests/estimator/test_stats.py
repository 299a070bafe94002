import itertools

import numpy as np
import pytest

from estimator import stats
from estimator.model import Run


def _lev(a: str, b: str) -> int:
    d = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, d[0] = d[0], i
        for j, y in enumerate(b, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (x != y))
    return d[-1]


def _lcs(a: str, b: str) -> int:
    d = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, j in itertools.product(range(len(a)), range(len(b))):
        d[i + 1][j + 1] = d[i][j] + 1 if a[i] == b[j] else max(d[i][j + 1], d[i + 1][j])
    return d[-1][-1]


def test_vectorised_edit_distances_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    outs = ["".join(rng.choice(list("abc"), rng.integers(0, 7))) for _ in range(12)]
    pairs = [(a, b) for a, b in itertools.combinations(outs, 2)]
    np.testing.assert_array_equal(
        stats.edit_lengths(pairs, lcs=False), [_lev(a, b) for a, b in pairs]
    )
    np.testing.assert_array_equal(
        stats.edit_lengths(pairs, lcs=True), [_lcs(a, b) for a, b in pairs]
    )
    want = np.mean([_lev(a, b) for a, b in pairs]) / 7
    assert stats.avg_lev(outs, 7) == pytest.approx(want)


def test_collision_rate_is_unbiased() -> None:
    rng = np.random.default_rng(1)
    p = np.array([0.6, 0.3, 0.1])
    est = [stats.collision_rate(list(rng.choice(3, 5, p=p))) for _ in range(20000)]
    assert np.mean(est) == pytest.approx((p**2).sum(), abs=0.005)  # the plug-in would be biased up


def test_tarr_unique_memf_first_divergence() -> None:
    groups = [["a", "a", "a"], ["a", "b", "a"], ["x"]]
    assert stats.tarr_at_n(groups, 3) == 0.5
    assert stats.unique_completions(groups[1]) == 2
    assert stats.memf(groups[1]) == pytest.approx(2 / 3)
    assert stats.exact_match_rate(groups) == pytest.approx((6 + 2) / 12)
    assert stats.first_divergence("abc", "abd") == 2
    assert stats.first_divergence("ab", "abc") == 2
    assert stats.first_divergence("ab", "ab") is None


def test_kaplan_meier_by_hand() -> None:
    km = stats.kaplan_meier(np.array([3, 5, 5, 8]), np.array([True, True, False, True]))
    np.testing.assert_allclose(km.survival, [0.75, 0.5, 0.0])
    np.testing.assert_array_equal(km.at_risk, [4, 3, 1])


def test_garwood_interval_coverage() -> None:
    rng = np.random.default_rng(2)
    lam, e = 0.003, 2000.0
    d = rng.poisson(lam * e, 4000)
    cover = [
        stats.divergence_hazard(x, e).lower <= lam <= stats.divergence_hazard(x, e).upper for x in d
    ]
    assert np.mean(cover) >= 0.95  # exact intervals are conservative
    h0 = stats.divergence_hazard(0, 1000)
    assert h0.estimate == 0 and h0.upper == pytest.approx(-np.log(0.025) / 1000, rel=1e-6)


def test_pairwise_first_divergences_eos_and_censoring() -> None:
    def run(toks: str, fr: str = "stop") -> Run:
        return Run(tuple(toks), None, None, toks, fr)

    pd = stats.pairwise_first_divergences(
        [run("abcd"), run("abxd"), run("ab"), run("abcd", "length")]
    )
    # pairs: (0,1) K=2; (0,2) EOS at 2; (0,3) censored 4; (1,2) EOS at 2; (1,3) K=2; (2,3) EOS at 2
    np.testing.assert_array_equal(pd.positions, [2, 2, 4, 2, 2, 2])
    np.testing.assert_array_equal(pd.diverged, [1, 1, 0, 1, 1, 1])
    np.testing.assert_array_equal(pd.at_risk, [3, 3, 4, 3, 3, 3])
