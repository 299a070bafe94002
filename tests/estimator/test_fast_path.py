"""The vectorised per-update path (compare_trial → loglik_grid) equals a straightforward
node-by-node reference implementation of science.md §3b on random trials (fixed seed)."""

import math

import numpy as np
import pytest

from estimator._trie import trie_comparison
from estimator.compare import compare_trial
from estimator.likelihood import Likelihood, loglik_grid, loglik_grid_reference
from estimator.model import Run, Trial
from estimator.online import OnlineConfig

VOCAB = [f"w{i}" for i in range(7)]


def _random_trial(rng: np.random.Generator, i: int) -> Trial:
    length = int(rng.integers(1, 12))
    base = rng.integers(0, len(VOCAB), length)
    logits = rng.normal(0, 1.5, (length, len(VOCAB)))
    runs = []
    for _ in range(int(rng.integers(2, 5))):
        cut = int(rng.integers(0, length + 1))
        n = int(rng.integers(max(1, cut), length + 3))
        toks, tops, chosen = [], [], []
        for s in range(n):
            same = s < cut or (s < length and rng.random() < 0.5)
            t = int(base[s]) if same else int(rng.integers(len(VOCAB)))
            z = (logits[s] if s < logits.shape[0] else np.zeros(len(VOCAB))) + rng.normal(
                0, 0.05 if rng.random() < 0.5 else 0.0, len(VOCAB)
            )
            lp = z - np.log(np.exp(z).sum())
            k = int(rng.integers(2, 6))
            order = np.argsort(-lp)[:k]
            if rng.random() < 0.1:
                order = order[::-1]  # not most likely first
            top = tuple((VOCAB[j], float(lp[j])) for j in order)
            toks.append(VOCAB[t])
            tops.append(top)
            chosen.append(float(lp[t]))
        with_top = rng.random() < 0.85
        runs.append(
            Run(
                tuple(toks),
                tuple(chosen),
                tuple(tops) if with_top else None,
                "".join(toks),
                "length" if rng.random() < 0.5 else "stop",
            )
        )
    return Trial(f"r{i}", tuple(runs))


def _reference_loglik(trial: Trial, temps: np.ndarray) -> np.ndarray | None:
    """ℓ(T) straight from the definition: every trie node reached by >= 2 runs with top-k; ẑ =
    mean over those runs of their logprob of each token of the union of their top-k (a missing
    token takes the run's smallest reported logprob); choices outside the union not scored."""
    runs = [r for r in trial.runs if r.has_top_logprobs]
    if len(runs) < 2:
        return None
    out = np.zeros(temps.size)
    for s in range(max(len(r.tokens) for r in runs)):
        groups: dict[tuple[str, ...], list[Run]] = {}
        for r in runs:
            if len(r.tokens) > s:
                groups.setdefault(r.tokens[:s], []).append(r)
        for g in groups.values():
            if len(g) < 2:
                continue
            tops = [dict(r.top_logprobs[s]) for r in g]  # type: ignore[index]
            union = {t for d in tops for t in d}
            z = {t: float(np.mean([d.get(t, min(d.values())) for d in tops])) for t in union}
            zs = np.array(list(z.values()))
            for r in g:
                c = r.tokens[s]
                if c not in z:
                    continue
                for j, temp in enumerate(temps):
                    a = zs / temp
                    out[j] += z[c] / temp - (a.max() + math.log(np.exp(a - a.max()).sum()))
    return out


def test_fast_path_equals_reference_on_random_trials() -> None:
    rng = np.random.default_rng(2024)
    grid = OnlineConfig().grid
    temps = np.array([0.03, 0.3, 3.0])
    checked = 0
    for i in range(150):
        trial = _random_trial(rng, i)
        ref = _reference_loglik(trial, grid)
        nodes = trie_comparison(trial).nodes
        if ref is None:
            assert nodes is None
            continue
        assert nodes is not None
        fast = loglik_grid(nodes, grid)
        np.testing.assert_allclose(fast, ref, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(loglik_grid_reference(nodes, grid), ref, rtol=1e-9, atol=1e-9)
        fast_nodes = compare_trial(trial).nodes  # the path the estimators use
        assert fast_nodes is not None
        np.testing.assert_allclose(loglik_grid(fast_nodes, grid), ref, rtol=1e-9, atol=1e-9)
        lk = Likelihood(nodes)
        exact = [lk.loglik(1 / t) for t in temps]
        np.testing.assert_allclose(exact, _reference_loglik(trial, temps), rtol=1e-9, atol=1e-9)
        checked += 1
    assert checked > 100


@pytest.mark.parametrize("temp", [0.005, 0.05])
def test_loglik_grid_equals_reference_on_simulated_pairs(temp: float) -> None:
    from estimator.simulate import simulate_pairs

    sp = simulate_pairs(np.random.default_rng(9), pairs=20, length=128, temperature=temp)
    grid = OnlineConfig().grid
    for t in sp.trials():
        nodes = trie_comparison(t).nodes
        assert nodes is not None
        np.testing.assert_allclose(
            loglik_grid(nodes, grid), loglik_grid_reference(nodes, grid), rtol=1e-12, atol=1e-9
        )


def _random_pair(rng: np.random.Generator, i: int, k: int) -> Trial:
    """Two runs with one k everywhere: shared prefix, optional divergence, EOS, jittered
    logprobs (top-k token lists may then differ), unsorted rows and tail choices."""
    length = int(rng.integers(1, 40))
    logits = rng.normal(0, 1.0, (length + 3, len(VOCAB)))
    base = logits.argmax(1)
    cut = int(rng.integers(0, length + 1))
    sigma = [0.0, 0.02, 0.3][int(rng.integers(3))]
    runs = []
    for r in range(2):
        n = length if rng.random() < 0.7 else int(rng.integers(max(1, cut), length + 3))
        toks, tops, chosen = [], [], []
        for s in range(n):
            z = logits[s] + rng.normal(0, sigma, len(VOCAB))
            lp = z - np.log(np.exp(z).sum())
            order = np.argsort(-lp)[:k]
            if rng.random() < 0.05:
                order = order[::-1]  # not most likely first
            if s < cut:
                t = int(base[s]) if rng.random() < 0.9 else int(np.argsort(-logits[s])[k - 1 + r])
            else:
                t = int(rng.integers(len(VOCAB)))
            toks.append(VOCAB[t])
            tops.append(tuple((VOCAB[j], float(lp[j])) for j in order))
            chosen.append(float(lp[t]))
        runs.append(
            Run(
                tuple(toks),
                tuple(chosen),
                tuple(tops),
                "".join(toks),
                "length" if rng.random() < 0.5 else "stop",
            )
        )
    return Trial(f"p{i}", tuple(runs))


@pytest.mark.parametrize("vectorised", [True, False])
def test_pair_fast_path_equals_general_path(
    vectorised: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Also with the row-by-row rule that is used when a token hash match is not confirmed."""
    from estimator import _pair

    if not vectorised:
        monkeypatch.setattr(_pair, "_differing_rows_py", lambda *a: None)

    rng = np.random.default_rng(77)
    grid = OnlineConfig().grid
    used = 0
    seen = dict.fromkeys(
        ("diverged", "tail", "unsorted", "top_lists_differ", "reordered", "other_tokens"), 0
    )
    for i in range(300):
        trial = _random_pair(rng, i, int(rng.integers(2, 6)))
        fast = _pair.pair_comparison(trial)
        ref = trie_comparison(trial)
        if fast is None:
            continue
        used += 1
        for name in ("pairs", "diverged", "tokens_at_risk", "exact_match_pairs"):
            assert getattr(fast, name) == getattr(ref, name), name
        assert fast.first_divergences == ref.first_divergences
        assert fast.exemplars == ref.exemplars
        assert fast.jitter_positions == ref.jitter_positions
        assert fast.jitter_identical_positions == ref.jitter_identical_positions
        assert fast.jitter_sq_sum == pytest.approx(ref.jitter_sq_sum, rel=1e-12, abs=1e-15)
        np.testing.assert_allclose(fast.jitter_gaps, ref.jitter_gaps, rtol=1e-12)
        assert fast.nodes is not None and ref.nodes is not None
        assert fast.nodes.tail_choices == ref.nodes.tail_choices
        assert fast.nodes.min_k == ref.nodes.min_k
        assert fast.nodes.weights.sum() == ref.nodes.weights.sum()
        assert fast.nodes.linear == pytest.approx(ref.nodes.linear, rel=1e-12, abs=1e-12)
        np.testing.assert_allclose(
            loglik_grid(fast.nodes, grid), loglik_grid(ref.nodes, grid), rtol=1e-10, atol=1e-10
        )
        np.testing.assert_allclose(  # and the definition of §3b itself
            loglik_grid(fast.nodes, grid), _reference_loglik(trial, grid), rtol=1e-9, atol=1e-9
        )
        assert compare_trial(trial).jitter_sq_sum == fast.jitter_sq_sum  # dispatch
        seen["diverged"] += fast.diverged
        seen["tail"] += fast.nodes.tail_choices > 0
        seen["unsorted"] += any(
            [x for _, x in top] != sorted((x for _, x in top), reverse=True)
            for r in trial.runs
            for top in r.top_logprobs or ()
        )
        seen["top_lists_differ"] += any(
            [t for t, _ in x] != [t for t, _ in y]
            for x, y in zip(
                trial.runs[0].top_logprobs or (), trial.runs[1].top_logprobs or (), strict=False
            )
        )
        # differing rows: same tokens in another order (aligned into the block, which is then
        # sorted) and other token sets (union rule)
        pairs_ = list(
            zip(trial.runs[0].top_logprobs or (), trial.runs[1].top_logprobs or (), strict=False)
        )
        seen["reordered"] += any(
            [t for t, _ in x] != [t for t, _ in y] and dict(x).keys() == dict(y).keys()
            for x, y in pairs_
        )
        seen["other_tokens"] += any(dict(x).keys() != dict(y).keys() for x, y in pairs_)
    assert used > 250
    assert min(seen.values()) >= 10, seen  # every branch of the fast path was exercised
