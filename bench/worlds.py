"""Serving worlds for interval coverage that the estimator was not written against.

Only `boltzmann` is the estimator's model. The others are what real stacks do: each run perturbs
the logits and takes the argmax, a replay often meets its primary's batch shape and reproduces it
bit for bit, prompts differ in sensitivity, noise may appear only above a load, and it may be
correlated along the answer. Under them the likelihood is misspecified, the estimator converges to a
pseudo-true T* (the Boltzmann temperature nearest to the world), and the positions of one trial are
not independent observations: the setting in which the trial must be the unit of independence.

Each trial is one prompt with `runs` runs (primary + replays) of `length` tokens. Runs that share a
prefix share the base logits of that context (the trie real replays have); a group of runs that
splits continues on fresh contexts. Gaps follow a log-normal top-1/top-2 law (Δ = exp(N(0.5, 1.5))),
64 tokens, top-5 reported; the perturbed runs report the logprobs of the logits they used.

Worlds (`WORLDS`): boltzmann (ideal sampling at T), jitter (i.i.d. Gaussian noise on every logit of
every run), reproduce-0.2/0.5/0.8 (the primary is perturbed; each replay reproduces it exactly with
that probability, else is perturbed afresh; per-prompt noise scale log-uniform over a factor 10),
prompts (per-prompt noise scale over a factor 10, no reproduction), load (noise only on trials
above a load; loads uniform over 1..64, noise above 16), correlated (noise an AR(1) along the
answer, ρ = 0.9, shared by all logits of a position's draw, plus a reproduce-0.5 replay law).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from estimator.model import Run, Trial, TrialContext

__all__ = ["WORLDS", "World"]

VOCAB = 64
TOP_K = 5
CONTEXT = TrialContext("world", "world", "1")


@dataclass(frozen=True)
class World:
    """A serving world: ``temperature`` (boltzmann) or noise scale ``sigma`` (all others)."""

    name: str
    temperature: float = 0.0
    sigma: float = 0.0
    reproduce: float = 0.0  # P(a replay reproduces its primary bit for bit)
    spread: float = 1.0  # per-prompt noise scale log-uniform over [σ/√spread, σ·√spread]
    load_threshold: int = 0  # noise only on trials whose load exceeds this
    rho: float = 0.0  # AR(1) correlation of a run's noise along the answer

    def _logits(self, rng: np.random.Generator, n: int) -> np.ndarray:
        delta = np.exp(rng.normal(0.5, 1.5, n))
        rest = -delta[:, None] - np.cumsum(rng.exponential(1.0, (n, VOCAB - 2)), axis=1)
        return np.concatenate([np.zeros((n, 1)), -delta[:, None], rest], axis=1)

    def _noise(self, rng: np.random.Generator, runs: int, length: int, scale: float) -> np.ndarray:
        """(runs, length, VOCAB) perturbations, replays reproducing the primary's draw."""
        eps = rng.standard_normal((runs, length, VOCAB))
        if self.rho > 0:
            for s in range(1, length):
                eps[:, s] = self.rho * eps[:, s - 1] + np.sqrt(1 - self.rho**2) * eps[:, s]
        same = rng.random(runs) < self.reproduce
        same[0] = False
        eps[same] = eps[0]
        return scale * eps

    def trial(self, rng: np.random.Generator, prompt: int, *, runs: int, length: int) -> Trial:
        scale = self.sigma
        if self.spread > 1:
            scale *= float(np.exp(rng.uniform(-0.5, 0.5) * np.log(self.spread)))
        if self.load_threshold and int(rng.integers(1, 65)) <= self.load_threshold:
            scale = 0.0
        # One fresh context per run and position, drawn up front: a group of runs sharing a
        # prefix reads its leader's (the smallest run index in it), so each group sees one draw.
        base = self._logits(rng, runs * length).reshape(runs, length, VOCAB)
        gumbel = rng.gumbel(size=base.shape) if self.temperature > 0 else None
        noise = self._noise(rng, runs, length, scale) if gumbel is None else None
        leader = np.zeros(runs, dtype=int)
        tokens = np.zeros((runs, length), dtype=int)
        lps = np.zeros((runs, length, VOCAB))
        for s in range(length):
            z = base[leader, s]
            if gumbel is not None:  # ideal sampling: identical logprobs, Gumbel-max per run
                tok = (z / self.temperature + gumbel[:, s]).argmax(1)
            else:  # perturbed logits, greedy
                assert noise is not None
                z = z + noise[:, s]
                tok = z.argmax(1)
            m = z.max(1, keepdims=True)
            lps[:, s] = z - m - np.log(np.exp(z - m).sum(1, keepdims=True))
            tokens[:, s] = tok
            # the new leader: the first run with the same (leader, token)
            key = leader * VOCAB + tok
            first: dict[int, int] = {}
            for r, kk in enumerate(key.tolist()):
                first.setdefault(kk, r)
            leader = np.array([first[kk] for kk in key.tolist()])
        return Trial(
            f"{self.name}-{prompt}", tuple(_run(tokens[r], lps[r]) for r in range(runs)), CONTEXT
        )


def _run(tokens: np.ndarray, lp: np.ndarray) -> Run:
    order = np.argsort(-lp, axis=1, kind="stable")[:, :TOP_K]
    top = tuple(
        tuple((f"w{j}", float(lp[s, j])) for j in order[s].tolist()) for s in range(tokens.size)
    )
    names = tuple(f"w{t}" for t in tokens.tolist())
    chosen = tuple(float(lp[s, t]) for s, t in enumerate(tokens.tolist()))
    return Run(names, chosen, top, " ".join(names), "length")


WORLDS: dict[str, World] = {
    w.name: w
    for w in (
        World("boltzmann", temperature=0.05),
        World("jitter", sigma=0.08),
        World("reproduce-0.2", sigma=0.08, reproduce=0.2, spread=10),
        World("reproduce-0.5", sigma=0.08, reproduce=0.5, spread=10),
        World("reproduce-0.8", sigma=0.08, reproduce=0.8, spread=10),
        World("prompts", sigma=0.08, spread=10),
        World("load", sigma=0.1, load_threshold=16),
        World("correlated", sigma=0.08, reproduce=0.5, rho=0.9),
    )
}
