"""Ground-truth generators for interval coverage, independent of estimator/simulate.py.

A `TruthModel` is a toy autoregressive language model: the logits at a position are a pure function
of (prompt, prefix), drawn from a seeded generator keyed by a hash of the prefix. Runs that share a
prefix therefore see bit-identical logits (as on a deterministic stack), and a run that diverged
continues on logits of its own context — the tree structure real replays have, for any number of
runs (simulate.py draws independent pairs instead). A run at temperature T samples exactly from
softmax(z/T) (Gumbel-max); it reports raw T=1 top-k logprobs, as vLLM does.

Gap laws (top-1/top-2 gap Δ, then the spacings of lower ranks) differ from simulate.py's mixture on
purpose: coverage is a claim about the world, so it is checked on worlds the estimator was not
written against.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import numpy as np

from estimator.model import Run, Trial, TrialContext

TRUTH_CONTEXT = TrialContext("truth", "truth", "1")
GapLaw = Literal["lognormal", "exponential", "ties", "flat-tail"]


@dataclass(frozen=True)
class TruthModel:
    """``law``: lognormal (heavy left tail of near-ties: Δ = exp(N(0.5, 1.5))); exponential
    (Δ ~ Exp(2)); ties (a quarter of positions with Δ ~ U(0, 0.3), the rest Exp(5)); flat-tail
    (lognormal Δ, then a long flat tail holding much of the T=1 mass)."""

    law: GapLaw = "lognormal"
    vocab: int = 64
    top_k: int = 5
    seed: int = 0

    def logits(self, prompt: int, prefix: tuple[int, ...]) -> np.ndarray:
        key = hashlib.blake2b(repr((self.seed, prompt, prefix)).encode(), digest_size=8).digest()
        rng = np.random.default_rng(int.from_bytes(key, "little"))
        if self.law == "exponential":
            delta = rng.exponential(2.0)
        elif self.law == "ties":
            delta = rng.uniform(0, 0.3) if rng.random() < 0.25 else rng.exponential(5.0)
        else:
            delta = float(np.exp(rng.normal(0.5, 1.5)))
        spacing = 0.01 if self.law == "flat-tail" else 1.0
        rest = -delta - np.cumsum(rng.exponential(spacing, self.vocab - 2))
        z = np.concatenate([[0.0, -delta], rest])
        return z[rng.permutation(self.vocab)]  # token ids carry no rank information

    def run(self, rng: np.random.Generator, prompt: int, length: int, temperature: float) -> Run:
        tokens: list[int] = []
        chosen: list[float] = []
        tops: list[tuple[tuple[str, float], ...]] = []
        for _ in range(length):
            z = self.logits(prompt, tuple(tokens))
            lp = z - z.max() - np.log(np.exp(z - z.max()).sum())
            if temperature > 0:
                tok = int(np.argmax(z / temperature + rng.gumbel(size=z.size)))
            else:
                tok = int(np.argmax(z))
            order = np.argsort(-lp, kind="stable")[: self.top_k]
            tops.append(tuple((f"w{j}", float(lp[j])) for j in order))
            tokens.append(tok)
            chosen.append(float(lp[tok]))
        names = tuple(f"w{t}" for t in tokens)
        return Run(names, tuple(chosen), tuple(tops), " ".join(names), "length")

    def trial(
        self,
        rng: np.random.Generator,
        prompt: int,
        *,
        runs: int,
        length: int,
        temperature: float,
        context: TrialContext = TRUTH_CONTEXT,
    ) -> Trial:
        return Trial(
            f"truth-{self.seed}-{prompt}",
            tuple(self.run(rng, prompt, length, temperature) for _ in range(runs)),
            context,
        )
