"""The A/B statistics on simulated endpoints of known ground truth (fixed seeds, no model): the
cross-divergence rate's interval with the prompt as the unit, the Boltzmann prediction of cross
differences, and the verdict's logic."""

from __future__ import annotations

import math

import numpy as np
import pytest

from estimator.simulate import GapModel
from measure.cross import boltzmann_check, clustered_proportion, cross_divergence, tempered
from measure.store import Key, Record
from measure.verdict import Joint, verdict

LEVEL = 0.95


def _record(role: str, prompt: str, run: int, tokens: list[str], top: list | None = None) -> Record:
    lps = None if top is None else tuple(dict(t)[tok] for t, tok in zip(top, tokens, strict=True))
    return Record(
        Key(role, prompt, run, 0.0, 1),
        tuple(tokens),
        lps,
        None if top is None else tuple(top),
        " ".join(tokens),
        "length",
        len(tokens),
        0.1,
        0.0,
        "s",
    )


def test_cross_divergence_counts_pairs_positions_and_prompts() -> None:
    base = [_record("sut", "p", r, ["a", "b", "c", "d"]) for r in range(2)]
    base += [_record("sut", "q", 0, ["x", "y"]), _record("sut", "q", 1, ["x", "z"])]
    cand = [
        _record("cand", "p", 0, ["a", "b", "c", "d"]),
        _record("cand", "p", 1, ["a", "b", "e", "d"]),
    ]
    cand += [_record("cand", "q", 0, ["x", "y"])]
    cand += [_record("cand", "only-candidate", 0, ["m"])]  # not answered by the baseline: left out
    c = cross_divergence(base, cand, level=LEVEL)
    # p: 2 x 2 pairs, the candidate's run 1 differs from both baseline runs at token 2;
    # q: 2 x 1 pairs, baseline run 1 differs at token 1
    assert (c.prompts, c.pairs, c.diverged_pairs, c.prompts_differing) == (2, 6, 3, 2)
    assert c.rate == pytest.approx(0.5)
    assert c.first_divergence_median == 2.0 and c.first_divergence_min == 1
    assert c.rate_lower is not None and c.rate_upper is not None
    assert 0 < c.rate_lower < 0.5 < c.rate_upper < 1
    # tokens compared: p's diverged pairs 3 + 3, its equal pairs 4 + 4; q's 2 (diverged) + 2
    assert c.hazard == pytest.approx(3 / 18)


def _cross_counts(
    rng: np.random.Generator, prompts: int, runs: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Per prompt: baseline answers from p, candidate answers from q over 3 answers, with the
    prompt's sensitivity drawn at random (many prompts never vary); the prompt's true cross
    rate 1 − Σ p·q."""
    d, n, truth = [], [], []
    for _ in range(prompts):
        if rng.random() < 0.4:
            p = q = np.array([1.0, 0.0, 0.0])
        else:
            p = rng.dirichlet([4.0, 1.0, 0.5])
            q = rng.dirichlet([3.0, 1.0, 1.0])
        a = rng.choice(3, runs, p=p)
        b = rng.choice(3, runs, p=q)
        d.append(float((a[:, None] != b[None, :]).sum()))
        n.append(float(runs * runs))
        truth.append(1 - float(p @ q))
    return np.array(d), np.array(n), float(np.mean(truth))


def test_cross_rate_interval_covers_the_population_rate() -> None:
    """The target is the mean cross rate over the population of prompts (computed on 20,000);
    datasets of 16 prompts x 3 runs per side. Pairs of one prompt share runs: an interval that
    treated the 144 pairs as independent would cover far less (checked below)."""
    rng = np.random.default_rng(7)
    _, _, truth = _cross_counts(rng, 20_000, 1)
    covered = naive_covered = 0
    trials = 400
    for _ in range(trials):
        d, n, _ = _cross_counts(rng, 16, 3)
        _, lo, hi = clustered_proportion(d, n, LEVEL)
        covered += lo <= truth <= hi
        # the naive binomial interval (pairs as independent) for contrast
        r = d.sum() / n.sum()
        half = 1.96 * math.sqrt(max(r * (1 - r), 1e-12) / n.sum())
        naive_covered += r - half <= truth <= r + half
    coverage = covered / trials
    print(
        f"\ncross-rate coverage {coverage:.3f} (naive pairs-as-independent {naive_covered / trials:.3f})"
    )
    assert 0.92 <= coverage <= 0.995
    assert naive_covered / trials < coverage - 0.1


def test_cross_rate_with_no_difference_is_bounded_by_the_prompts() -> None:
    """Nothing differed: the upper bound counts each prompt once (not each pair) and shrinks
    with more prompts."""
    r8, lo8, hi8 = clustered_proportion([0.0] * 8, [9.0] * 8, LEVEL)
    _, _, hi32 = clustered_proportion([0.0] * 32, [9.0] * 32, LEVEL)
    assert r8 == lo8 == 0.0
    assert hi8 == pytest.approx(1 - 0.025 ** (1 / 8))
    assert hi32 < hi8


VOCAB = [f"t{i}" for i in range(6)]
GAPS = GapModel(vocab=6, tie_share=0.5, tie_scale=1.0)


class _Model:
    """A deterministic 'model': the logits after each prefix of one prompt (seeded by it)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.nodes: dict[tuple[str, ...], np.ndarray] = {}

    def logits(self, prefix: tuple[str, ...]) -> np.ndarray:
        if prefix not in self.nodes:
            rng = np.random.default_rng([self.seed, len(prefix), *map(VOCAB.index, prefix)])
            z = GAPS.logits(rng, ())
            self.nodes[prefix] = z[rng.permutation(len(VOCAB))]
        return self.nodes[prefix]

    def run(self, rng: np.random.Generator, temperature: float, length: int) -> tuple[list, list]:
        tokens: list[str] = []
        tops = []
        for _ in range(length):
            z = self.logits(tuple(tokens))
            lp = z - np.log(np.exp(z).sum())
            order = np.argsort(-lp)
            tops.append(tuple((VOCAB[i], float(lp[i])) for i in order))
            tokens.append(VOCAB[int(rng.choice(len(VOCAB), p=tempered(z, temperature)))])
        return tokens, tops


def _boltzmann_world(seed: int, t_base: float, t_cand: float) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    base, cand = [], []
    for p in range(10):
        m = _Model(seed * 1000 + p)
        for r in range(3):
            base.append(_record("sut", f"p{p}", r, *m.run(rng, t_base, 8)))
            cand.append(_record("cand", f"p{p}", r, *m.run(rng, t_cand, 8)))
    return base, cand


def test_boltzmann_prediction_matches_ideal_samplers_and_rejects_wrong_temperatures() -> None:
    """Two ideal samplers of one model at 0.3 and 1.0: the cross differences observed match the
    prediction at the true temperatures (z within ±1.96 about 95 % of the time, centred on 0);
    predicted at 0.3 and 0.3 instead, the candidate's extra differences are seen."""
    zs, wrong = [], []
    for seed in range(40):
        base, cand = _boltzmann_world(seed, 0.3, 1.0)
        right = boltzmann_check(base, cand, 0.3, 1.0, level=LEVEL)
        assert right is not None and right.pairs == 90
        zs.append(right.z)
        w = boltzmann_check(base, cand, 0.3, 0.3, level=LEVEL)
        assert w is not None
        wrong.append(w.reading)
    z = np.array(zs, dtype=float)
    print(
        f"\nBoltzmann check: mean z {z.mean():.2f}, sd {z.std():.2f}, |z|<=1.96 "
        f"{np.mean(np.abs(z) <= 1.96):.2f}; wrong temperatures flagged "
        f"{wrong.count('more than predicted')}/{len(wrong)}"
    )
    assert np.mean(np.abs(z) <= 1.96) >= 0.85
    assert abs(z.mean()) < 0.5
    assert wrong.count("more than predicted") >= 0.8 * len(wrong)


def test_two_greedy_copies_never_part_on_a_tie() -> None:
    z = np.array([0.0, 0.0, -1.0])
    assert tempered(z, 0.0) @ tempered(z, 0.0) == 1.0
    assert tempered(z, 1e-9) @ tempered(z, 1e-9) == pytest.approx(0.5)


def test_verdict_removes_adds_or_is_inconclusive() -> None:
    base = Joint(0.05, 0.03, 0.08, 0.975)
    v = verdict(base, Joint(0.0, 0.0, 0.01, 0.975), 100.0, 70.0, LEVEL)
    assert v.outcome == "removes"
    assert v.removed == 1.0 and v.removed_lower == pytest.approx(1 - 0.01 / 0.03)
    assert v.removed_upper == 1.0 and v.throughput_ratio == pytest.approx(0.7)
    assert v.text == (
        "switching removes 100 % of the randomness (67 % to 100 %, 95 % joint) at 70 % of the "
        "baseline's throughput (−30 %)"
    )
    v = verdict(base, Joint(0.04, 0.02, 0.07, 0.975), 100.0, 90.0, LEVEL)
    assert v.outcome == "inconclusive" and "includes 0" in v.text
    assert v.removed_lower is not None and v.removed_lower < 0 < v.removed == pytest.approx(0.2)
    v = verdict(base, Joint(0.3, 0.2, 0.4, 0.975), 100.0, 120.0, LEVEL)
    assert v.outcome == "adds" and "(+20 %)" in v.text
    v = verdict(Joint(0.0, 0.0, 0.05, 0.975), Joint(0.0, 0.0, 0.05, 0.975), 1.0, 1.0, LEVEL)
    assert v.outcome == "inconclusive" and "not shown to be random" in v.text
    v = verdict(None, base, 1.0, None, LEVEL)
    assert v.outcome == "inconclusive" and "baseline has no T_bg interval" in v.text
    assert "throughput not measured" in v.text


def test_two_reproducible_endpoints_that_answer_differently_are_flagged() -> None:
    """Greedy on other logits (another checkpoint): no randomness on either side, so the model
    expects no difference; the differences seen are more than predicted."""
    rng = np.random.default_rng(3)
    base, cand = [], []
    for p in range(6):
        a, b = _Model(100 + p), _Model(200 + p)
        for r in range(2):
            base.append(_record("sut", f"p{p}", r, *a.run(rng, 0.0, 6)))
            cand.append(_record("cand", f"p{p}", r, *b.run(rng, 0.0, 6)))
    check = boltzmann_check(base, cand, 0.0, 0.0, level=LEVEL)
    assert check is not None and check.observed > 0 and check.expected == 0.0
    assert check.z is None and check.reading == "more than predicted"
    same = boltzmann_check(base, base, 0.0, 0.0, level=LEVEL)
    assert same is not None and same.observed == 0 and same.reading == "consistent"
