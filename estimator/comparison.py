"""What comparing the runs of one trial yields (`Comparison`, its `Divergence` exemplars) and
the pair convention every statistic shares (`pair_divergence`). `estimator.compare.compare_trial`
builds a `Comparison`; the conventions are documented there and in docs/estimators.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import compress, count
from operator import ne

import numpy as np

from estimator.model import Run
from estimator.nodes import Nodes


def _empty() -> np.ndarray:
    return np.zeros(0)


@dataclass(frozen=True)
class Divergence:
    """The first divergence of one pair: the two competing tokens and their reported logprobs
    (None for a run without logprobs, or at an end-of-sequence divergence)."""

    position: int
    token_a: str
    token_b: str
    logprob_a: float | None
    logprob_b: float | None
    run_a: int
    run_b: int

    @staticmethod
    def of_pair(a: Run, b: Run, position: int, run_a: int, run_b: int) -> Divergence:
        """The exemplar of runs ``a`` and ``b`` (indices ``run_a``, ``run_b``) diverging at
        ``position`` (a run that stopped there shows token "")."""
        ta = a.tokens[position] if position < len(a.tokens) else ""
        tb = b.tokens[position] if position < len(b.tokens) else ""
        return Divergence(
            position, ta, tb, _logprob_at(a, position), _logprob_at(b, position), run_a, run_b
        )


def _logprob_at(run: Run, pos: int) -> float | None:
    if run.logprobs is None or pos >= len(run.logprobs):
        return None
    return run.logprobs[pos]


def pair_divergence(a: Run, b: Run) -> tuple[int, bool, int]:
    """(K, diverged, tokens at risk) of one pair of runs: K the first position where their tokens
    differ; a run that stopped (finish_reason != "length") while the other went on diverged at
    K = its length; otherwise the pair is censored at the common length K. Tokens at risk: K + 1
    for a diverged pair (the diverging position was at risk), else K."""
    ta, tb = a.tokens, b.tokens
    n = min(len(ta), len(tb))
    k = next(compress(count(), map(ne, ta, tb)), n)  # the first differing position, if any
    if k < n:
        return k, True, k + 1
    if len(ta) != len(tb):
        short = a if len(ta) < len(tb) else b
        if short.finish_reason != "length":
            return n, True, n + 1
    return n, False, n


@dataclass(frozen=True)
class Comparison:
    """Everything one trial contributes: pair statistics, jitter sums, likelihood nodes.

    ``nodes`` is None when fewer than two runs report top-k logprobs; ``scored`` says whether the
    nodes hold a scored choice. The online estimator scores a comparison on its grid
    (`OnlineEstimator.score`): ``nll`` is then the undecayed −ℓ increment per grid point (>= 0,
    checked; zeros when not scored) and ``score_sq`` the square of its slope in log T; both are
    empty before. A scored comparison drops ``nodes`` and ``jitter_gaps`` (already used up), so
    what crosses a process boundary stays small.
    """

    pairs: int
    diverged: int
    tokens_at_risk: int
    exact_match_pairs: int
    first_divergences: tuple[int, ...]
    exemplars: tuple[Divergence, ...]
    jitter_sq_sum: float
    jitter_positions: int
    jitter_identical_positions: int
    # reference top1-top2 gap at each jitter position (the jitter model check reads them)
    jitter_gaps: np.ndarray = field(repr=False, default_factory=_empty)
    nodes: Nodes | None = field(repr=False, default=None)
    # positions of the runs where token strings collided and were told apart (estimator.tokens)
    token_collisions: int = 0
    scored: bool = False
    nll: np.ndarray = field(repr=False, default_factory=_empty)
    score_sq: np.ndarray = field(repr=False, default_factory=_empty)
