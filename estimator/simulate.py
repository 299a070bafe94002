"""Simulated serving stacks with known ground truth (science.md §5), vectorised with numpy.

Each position has V logits sorted by rank: z_0 = 0, z_1 = −Δ with Δ drawn from a realistic
top-1/top-2 gap mixture (a share of near-ties, the rest confident), then decreasing spacings.
Runs report the top-k of log softmax of the logits they used (raw logprobs, most likely first).
Systems: ideal Boltzmann sampling at temperature T (Gumbel-max, identical reported logprobs),
greedy decoding of logits with i.i.d. Gaussian noise of sd σ per token (so the top-1/top-2 gap of
one run has noise sd σ_Δ = √2·σ), and noiseless greedy decoding. Positions are independent given
the logits; after a pair diverges, the second run continues on fresh logits (a new context).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from estimator.compare import Nodes
from estimator.model import Run, Trial, TrialContext


@dataclass(frozen=True)
class GapModel:
    """Mixture for Δ = z_top1 − z_top2: ``tie_share`` of positions Exp(tie_scale), else
    ``confident_offset`` + Exp(confident_scale). Density at 0 = tie_share / tie_scale."""

    tie_share: float = 0.3
    tie_scale: float = 1.5
    confident_offset: float = 4.0
    confident_scale: float = 4.0
    spacing: float = 1.0  # mean extra gap between consecutive lower ranks
    vocab: int = 24

    def logits(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        tie = rng.random(shape) < self.tie_share
        delta = np.where(
            tie,
            rng.exponential(self.tie_scale, shape),
            self.confident_offset + rng.exponential(self.confident_scale, shape),
        )
        steps = rng.exponential(self.spacing, (*shape, self.vocab - 2))
        rest = -delta[..., None] - np.cumsum(steps, axis=-1)
        return np.concatenate([np.zeros((*shape, 1)), -delta[..., None], rest], axis=-1)


FLAT_TAIL = GapModel(spacing=0.02, vocab=64)  # a tail holding much of the T=1 mass


@dataclass(frozen=True)
class SimPairs:
    """Pairs of runs as arrays: tokens (P, 2, L) int (rank ids), logprobs (P, 2, L, V)."""

    tokens: np.ndarray
    logprobs: np.ndarray
    first: np.ndarray  # (P,) first divergence position, L when none
    k: int

    def trials(self) -> list[Trial]:
        return [
            Trial(
                f"p{p}", tuple(self._run(p, r) for r in range(2)), TrialContext("sim", "sim", "1")
            )
            for p in range(self.tokens.shape[0])
        ]

    def _run(self, p: int, r: int) -> Run:
        toks, lp = self.tokens[p, r], self.logprobs[p, r]
        order = np.argsort(-lp, axis=-1, kind="stable")[:, : self.k]
        names = [f"t{s}_{j}" for s in range(toks.size) for j in range(lp.shape[1])]
        width = lp.shape[1]
        top = tuple(
            tuple((names[s * width + j], float(lp[s, j])) for j in order[s])
            for s in range(toks.size)
        )
        tokens = tuple(names[s * width + int(toks[s])] for s in range(toks.size))
        chosen = tuple(float(lp[s, int(toks[s])]) for s in range(toks.size))
        return Run(tokens, chosen, top, "".join(tokens), "length")

    def ideal_nodes(self) -> Nodes:
        """The likelihood nodes of an ideal system, built straight from the arrays (runs report
        identical logprobs up to the divergence, so ẑ is the true top-k)."""
        length = self.logprobs.shape[2]
        n_at = np.minimum(self.first + 1, length)
        mask = np.arange(length)[None, :] < n_at[:, None]
        lp = self.logprobs[:, 0][mask]  # (N, V)
        order = np.argsort(-lp, axis=-1, kind="stable")[:, : self.k]
        top = np.take_along_axis(lp, order, 1)
        gaps = top[:, :1] - top
        counts = np.zeros_like(top)
        for r in range(2):
            hit = order == self.tokens[:, r][mask][:, None]
            counts += hit
        tail = int((2 - counts.sum(1)).sum())
        w = counts.sum(1)
        keep = w > 0
        linear = float((gaps * counts).sum())
        return Nodes(gaps[keep, 1:], w[keep], linear, tail, self.k)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    m = z.max(-1, keepdims=True)
    return np.asarray(z - m - np.log(np.exp(z - m).sum(-1, keepdims=True)))


def simulate_pairs(
    rng: np.random.Generator,
    *,
    pairs: int,
    length: int,
    temperature: float = 0.0,
    sigma: float = 0.0,
    gaps: GapModel = GapModel(),
    k: int = 5,
) -> SimPairs:
    """Pairs from an ideal system at ``temperature`` (sigma = 0), a greedy system with Gaussian
    logit noise ``sigma`` (temperature = 0), or a noiseless one (both 0)."""
    if temperature > 0 and sigma > 0:
        raise ValueError("simulate either Boltzmann sampling or Gaussian noise, not both")
    shape = (pairs, length)
    z = gaps.logits(rng, shape)

    def draw(z: np.ndarray, runs: int) -> tuple[np.ndarray, np.ndarray]:
        zz = np.repeat(z[:, None], runs, axis=1)
        if sigma > 0:
            zz = zz + sigma * rng.standard_normal(zz.shape)
        lp = _log_softmax(zz)
        if temperature > 0:
            zz = zz / temperature + rng.gumbel(size=zz.shape)
        return zz.argmax(-1), lp

    tok, lp = draw(z, 2)
    differ = tok[:, 0] != tok[:, 1]
    first = np.where(differ.any(1), differ.argmax(1), length)
    # Run 1 continues in a new context after the divergence.
    after = np.arange(length)[None, :] > first[:, None]
    if after.any():
        t2, lp2 = draw(gaps.logits(rng, shape), 1)
        tok[:, 1] = np.where(after, t2[:, 0], tok[:, 1])
        lp[:, 1] = np.where(after[..., None], lp2[:, 0], lp[:, 1])
    return SimPairs(tok, lp, first, k)


def simulate_prompts(
    rng: np.random.Generator,
    *,
    prompts: int,
    runs: int,
    length: int,
    temperature: float,
    gaps: GapModel = GapModel(),
    logits: np.ndarray | None = None,
) -> tuple[np.ndarray, list[list[tuple[int, ...]]]]:
    """Text-level outputs of ideal sampling (T = 0: greedy) for the paper's protocol: per prompt a
    fixed table of per-position logits (pass it back in to sample a reference on the same prompts).
    Returns (logits, outputs[prompt][run] as token-id tuples)."""
    z = gaps.logits(rng, (prompts, length)) if logits is None else logits
    zz = np.repeat(z[:, None], runs, axis=1)
    if temperature > 0:
        zz = zz / temperature + rng.gumbel(size=zz.shape)
    tok = zz.argmax(-1)
    return z, [[tuple(r.tolist()) for r in tok[p]] for p in range(z.shape[0])]


def prompt_trials(outputs: list[list[tuple[int, ...]]]) -> list[Trial]:
    """Text-level trials (no logprobs) from `simulate_prompts` outputs."""
    out = []
    for p, runs in enumerate(outputs):
        rs = tuple(
            Run(tuple(f"t{x}" for x in o), None, None, " ".join(map(str, o)), "length")
            for o in runs
        )
        out.append(Trial(f"q{p}", rs))
    return out
