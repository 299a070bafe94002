"""The likelihood's input: trie nodes reduced to gaps and weights (`Nodes`), and how the
comparison builds them (`NodeBuilder`, the union rule of `union_node`, `rank_choices`).

A node is a position reached by >= 2 runs with the same prefix. Its reference logits ẑ are the
mean of those runs' reported top-k logprobs over the union of their tokens (a token missing from
one run's top-k takes that run's smallest reported logprob there, an upper bound); choices outside
the union (the tail) are not scored (see estimator.compare).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from estimator.model import TopLogprobs


@dataclass(frozen=True)
class Nodes:
    """Trie nodes reduced to what the likelihood needs.

    ``gaps[v, j]`` = ẑ_max − ẑ_j >= 0 for the non-argmax reported tokens of node v (+inf padding);
    ``weights[v]`` = number of scored choices at v; ``linear`` = Σ over scored choices of the gap
    of the chosen token. Then ℓ(T) = −linear/T − Σ_v weights[v]·log(1 + Σ_j exp(−gaps[v, j]/T)).
    """

    gaps: np.ndarray
    weights: np.ndarray
    linear: float
    tail_choices: int = 0
    min_k: int = 0

    @staticmethod
    def empty() -> Nodes:
        return Nodes(np.zeros((0, 1)), np.zeros(0), 0.0, 0, 0)

    @staticmethod
    def concat(parts: list[Nodes]) -> Nodes:
        tail = sum(p.tail_choices for p in parts)
        parts = [p for p in parts if p.weights.size]
        if not parts:
            return Nodes(np.zeros((0, 1)), np.zeros(0), 0.0, tail, 0)
        width = max(p.gaps.shape[1] for p in parts)
        gaps = np.full((sum(p.weights.size for p in parts), width), np.inf)
        i = 0
        for p in parts:
            gaps[i : i + p.weights.size, : p.gaps.shape[1]] = p.gaps
            i += p.weights.size
        return Nodes(
            gaps,
            np.concatenate([p.weights for p in parts]),
            float(sum(p.linear for p in parts)),
            tail,
            min(p.min_k for p in parts),
        )


def _row_sum(a: np.ndarray) -> np.ndarray:
    """a.sum(1) for a 2-d array with few columns, by column (numpy's reduction over a short
    inner axis costs microseconds per call; the column loop adds whole contiguous vectors)."""
    out = a[:, 0].astype(float)
    for j in range(1, a.shape[1]):
        out += a[:, j]
    return out


class NodeBuilder:
    """Collects trie nodes block by block (``add``) and reduces them to `Nodes`; the fast and
    the general comparison paths both feed one, and may append finished blocks to ``gaps`` and
    ``weights`` directly (with ``linear``, ``tail`` and ``min_k`` kept in step)."""

    def __init__(self) -> None:
        self.gaps: list[np.ndarray] = []
        self.weights: list[np.ndarray] = []
        self.linear = 0.0
        self.tail = 0
        self.min_k = 10**9

    def add(self, z: np.ndarray, counts: np.ndarray) -> None:
        """z: (N, k) reference logits; counts: (N, k) choices per token."""
        if z.shape[1] > 1 and not (z[:, :-1] >= z[:, 1:]).all():
            # Not already most likely first (a stable sort would leave sorted rows unchanged).
            order = np.argsort(-z, axis=1, kind="stable")
            z = np.take_along_axis(z, order, 1)
            counts = np.take_along_axis(counts, order, 1)
        with np.errstate(invalid="ignore"):
            gaps = z[:, :1] - z
        finite = np.isfinite(gaps)
        all_finite = bool(finite.all())
        if not all_finite:
            gaps[~finite] = np.inf
            # Columns that are padding in every row add exactly 0 to ℓ: drop them.
            used = finite.any(0) | (counts > 0).any(0)
            width = int(used.nonzero()[0][-1]) + 1 if used.any() else 1
            gaps, counts, finite = gaps[:, :width], counts[:, :width], finite[:, :width]
        w = _row_sum(counts)
        keep = w > 0
        if not keep.any():
            return
        self.linear += float((np.where(counts > 0, gaps, 0.0) * counts).sum())
        if keep.all():
            self.gaps.append(gaps[:, 1:])
            self.weights.append(w)
        else:
            self.gaps.append(gaps[keep, 1:])
            self.weights.append(w[keep])
        k_min = z.shape[1] if all_finite else int(_row_sum(finite).min())
        self.min_k = min(self.min_k, k_min)

    def nodes(self) -> Nodes:
        if not self.weights:
            return Nodes(np.zeros((0, 1)), np.zeros(0), self.linear, self.tail, 0)
        width = max(1, max(g.shape[1] for g in self.gaps))
        if len(self.gaps) == 1 and self.gaps[0].shape[1] == width:
            return Nodes(self.gaps[0], self.weights[0], self.linear, self.tail, self.min_k)
        if all(g.shape[1] == width for g in self.gaps):
            return Nodes(
                np.concatenate(self.gaps),
                np.concatenate(self.weights),
                self.linear,
                self.tail,
                self.min_k,
            )
        gaps = np.full((sum(w.size for w in self.weights), width), np.inf)
        i = 0
        for g, w in zip(self.gaps, self.weights, strict=True):
            gaps[i : i + w.size, : g.shape[1]] = g
            i += w.size
        return Nodes(gaps, np.concatenate(self.weights), self.linear, self.tail, self.min_k)


def rank_choices(
    names: list[str], z: np.ndarray, chosen: Iterable[str]
) -> tuple[np.ndarray, np.ndarray, int]:
    """A union node's reference logits sorted most likely first, the count of runs choosing each
    token, and how many choices fell in the tail beyond the reported tokens."""
    order = np.argsort(-z, kind="stable")
    index = {names[i]: r for r, i in enumerate(order)}
    counts = np.zeros(len(names))
    tail = 0
    for c in chosen:
        if c in index:
            counts[index[c]] += 1
        else:
            tail += 1
    return z[order], counts, tail


def union_node(
    tops: tuple[TopLogprobs, TopLogprobs], chosen: tuple[str, str]
) -> tuple[np.ndarray, np.ndarray, int]:
    """Reference logits over the union of the two runs' tokens at one node (a token missing from
    a run's top-k takes that run's smallest reported logprob): (ẑ sorted descending, counts,
    tail choices). The rule of the general path's union nodes."""
    union: dict[str, list[float]] = {}
    for top in tops:
        for t, _ in top:
            union.setdefault(t, [])
    for top in tops:
        have = dict(top)
        floor = min(have.values())
        for t, xs in union.items():
            xs.append(have.get(t, floor))
    names = list(union)
    z = np.array([(xs[0] + xs[1]) / 2 for xs in union.values()])  # = np.mean of the two
    return rank_choices(names, z, chosen)
