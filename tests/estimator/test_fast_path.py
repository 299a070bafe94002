"""The vectorised per-update path (compare_trial → loglik_grid) equals a straightforward
node-by-node reference implementation of science.md §3b on random trials (fixed seed)."""

import math

import numpy as np
import pytest

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
        nodes = compare_trial(trial).nodes
        if ref is None:
            assert nodes is None
            continue
        assert nodes is not None
        fast = loglik_grid(nodes, grid)
        np.testing.assert_allclose(fast, ref, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(loglik_grid_reference(nodes, grid), ref, rtol=1e-9, atol=1e-9)
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
        nodes = compare_trial(t).nodes
        assert nodes is not None
        np.testing.assert_allclose(
            loglik_grid(nodes, grid), loglik_grid_reference(nodes, grid), rtol=1e-12, atol=1e-9
        )
