"""Compare the runs of one trial: pairwise first divergences, logprob jitter, and the trie nodes
that feed the Boltzmann likelihood (science.md §3b, §3c). `compare_trial` is the one entry point;
it returns a `Comparison` (estimator.comparison).

Tokens are compared by key: `Run.tokens` and the alternatives in `Run.top_logprobs` are token
identities (estimator.tokens: from bytes or ids where the upstream gives them; colliding strings
told apart where it does not), so matching by key never gives a chosen token another token's
logprob. A run built elsewhere must keep the alternatives at one position distinct
(`estimator.tokens.resolve_run` does it for a run keyed by text).

Conventions (documented in docs/estimators.md):
- A pair diverges at the first position K where its tokens differ; when one run is a strict prefix
  of the other and the shorter one stopped (finish_reason != "length") the pair diverged at
  K = len(shorter) (end-of-sequence against a token, reported as token ""). Otherwise a pair that
  never differs is censored at the common length (`estimator.comparison.pair_divergence`).
- Tokens at risk: K + 1 for a diverged pair (the diverging position was at risk), else the common
  length.
- Trie nodes: positions reached by >= 2 runs with the same prefix, where >= 2 of those runs report
  top-k logprobs. The reference logits are the mean of those runs' top-k logprob vectors over the
  union of their tokens; a token missing from one run's top-k takes that run's smallest reported
  logprob there (an upper bound). Choices outside the union (the tail) are not scored: the node
  likelihood is then the likelihood conditional on the choice being one of the reported tokens,
  which is exact for an ideal system and never overstates the tail's tempered mass.

Two implementations give the same numbers (tests/estimator/test_fast_path.py): a vectorised path
for the proxy's common trial (two runs with one top-k width, estimator._pair) and the general trie
walk for everything else (estimator._trie).
"""

from __future__ import annotations

from estimator._pair import pair_comparison
from estimator._trie import trie_comparison
from estimator.comparison import Comparison, Divergence
from estimator.model import Trial
from estimator.nodes import Nodes

__all__ = ["Comparison", "Divergence", "Nodes", "compare_trial"]


def compare_trial(trial: Trial, *, with_nodes: bool = True) -> Comparison:
    """Pairwise statistics, jitter and (unless ``with_nodes`` is False) the likelihood nodes of
    one trial of any number of runs."""
    c = pair_comparison(trial, with_nodes=with_nodes) if len(trial.runs) == 2 else None
    return c if c is not None else trie_comparison(trial, with_nodes=with_nodes)
