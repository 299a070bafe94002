"""Compare the runs of one trial: pairwise first divergences, logprob jitter, and the trie nodes
that feed the Boltzmann likelihood (science.md §3b, §3c).

Tokens are compared by key: `Run.tokens` and the alternatives in `Run.top_logprobs` are token
identities (estimator.tokens: from bytes or ids where the upstream gives them; colliding strings
told apart where it does not), so matching by key never gives a chosen token another token's
logprob. A run built elsewhere must keep the alternatives at one position distinct
(`estimator.tokens.resolve_run` does it for a run keyed by text).

Conventions (documented in docs/estimators.md):
- A pair diverges at the first position K where its tokens differ; when one run is a strict prefix
  of the other and the shorter one stopped (finish_reason != "length") the pair diverged at
  K = len(shorter) (end-of-sequence against a token, reported as token ""). Otherwise a pair that
  never differs is censored at the common length.
- Tokens at risk: K + 1 for a diverged pair (the diverging position was at risk), else the common
  length.
- Trie nodes: positions reached by >= 2 runs with the same prefix, where >= 2 of those runs report
  top-k logprobs. The reference logits are the mean of those runs' top-k logprob vectors over the
  union of their tokens; a token missing from one run's top-k takes that run's smallest reported
  logprob there (an upper bound). Choices outside the union (the tail) are not scored: the node
  likelihood is then the likelihood conditional on the choice being one of the reported tokens,
  which is exact for an ideal system and never overstates the tail's tempered mass.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import chain, compress, count
from operator import ne

import numpy as np

from estimator.model import Run, Trial

_PAD = "\x00"  # padding token for positions that report fewer than k alternatives


@dataclass(frozen=True)
class Divergence:
    """The first divergence of one pair: the two competing tokens and their reported logprobs."""

    position: int
    token_a: str
    token_b: str
    logprob_a: float | None
    logprob_b: float | None
    run_a: int
    run_b: int


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


@dataclass(frozen=True)
class Comparison:
    """Everything one trial contributes (pair statistics, jitter sums, likelihood nodes)."""

    pairs: int
    diverged: int
    tokens_at_risk: int
    exact_match_pairs: int
    first_divergences: tuple[int, ...]
    exemplars: tuple[Divergence, ...]
    jitter_sq_sum: float
    jitter_positions: int
    jitter_identical_positions: int
    # Σ over jitter positions of the predicted pair flip probability is computed later from these:
    jitter_gaps: np.ndarray = field(repr=False)  # reference top1-top2 gap at each jitter position
    nodes: Nodes | None = field(repr=False, default=None)  # None: no top-k logprobs
    # positions of the runs where token strings collided and were told apart (estimator.tokens)
    token_collisions: int = 0


class _View:
    """A run's top-k as arrays: tokens (L, k) str, logprobs (L, k) float (−inf padded)."""

    __slots__ = ("chosen", "k", "lp", "tok")

    def __init__(self, run: Run) -> None:
        top = run.top_logprobs
        assert top is not None
        n = len(top)
        k = len(top[0]) if n else 0
        flat = list(chain.from_iterable(top))
        if len(flat) == n * k and min(map(len, top), default=0) == k:  # one k everywhere
            toks, lps = zip(*flat, strict=True) if flat else ((), ())
            self.tok = np.array(toks, dtype=object).reshape(n, k)
            self.lp = np.array(lps, dtype=float).reshape(n, k)
        else:
            k = max(map(len, top), default=0)
            self.tok = np.empty((n, k), dtype=object)
            self.tok.fill(_PAD)  # np.full would turn "\x00" into "" (numpy strips NULs)
            self.lp = np.full((n, k), -np.inf)
            for s, t in enumerate(top):
                for j, (a, b) in enumerate(t):
                    self.tok[s, j], self.lp[s, j] = a, b
        self.k = k
        self.chosen = np.array(run.tokens, dtype=object)


class _TopEqual:
    """Per trial: whether two views report the same top-k tokens at each common position,
    computed once per pair of views and shared by the trie walk and the jitter sums."""

    __slots__ = ("_cache",)

    def __init__(self) -> None:
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def __call__(self, va: _View, vb: _View, start: int, end: int) -> np.ndarray:
        key = (id(va), id(vb))
        same = self._cache.get(key)
        if same is None:
            n = min(va.tok.shape[0], vb.tok.shape[0])
            if va.k == vb.k:
                same = (va.tok[:n] == vb.tok[:n]).all(1)
            else:
                same = np.zeros(n, dtype=bool)
            self._cache[key] = same
        return same[start:end]


def _pair_divergence(a: Run, b: Run) -> tuple[int, bool, int]:
    """(K, diverged, tokens at risk) for one pair."""
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


def _lp_at(run: Run, pos: int) -> float | None:
    if run.logprobs is None or pos >= len(run.logprobs):
        return None
    return run.logprobs[pos]


def _slow_node(
    views: list[_View], rows: list[int], chosen: list[str]
) -> tuple[np.ndarray, np.ndarray, int]:
    """Union reference logits at one node: (ẑ sorted descending, counts, tail choices)."""
    union: dict[str, list[float]] = {}
    for v, s in zip(views, rows, strict=True):
        for t in v.tok[s]:
            if t != _PAD:
                union.setdefault(str(t), [])
    for v, s in zip(views, rows, strict=True):
        have = {str(t): float(x) for t, x in zip(v.tok[s], v.lp[s], strict=True) if t != _PAD}
        floor = min(have.values())
        for t, xs in union.items():
            xs.append(have.get(t, floor))
    names = list(union)
    z = np.array([np.mean(union[t]) for t in names])
    return rank_choices(names, z, chosen)


def _row_sum(a: np.ndarray) -> np.ndarray:
    """a.sum(1) for a 2-d array with few columns, by column (numpy's reduction over a short
    inner axis costs microseconds per call; the column loop adds whole contiguous vectors)."""
    out = a[:, 0].astype(float)
    for j in range(1, a.shape[1]):
        out += a[:, j]
    return out


def _row_all(a: np.ndarray) -> np.ndarray:
    """a.all(1) for a 2-d boolean array with few columns (see _row_sum)."""
    out = a[:, 0].copy()
    for j in range(1, a.shape[1]):
        out &= a[:, j]
    return out


class _NodeBuilder:
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

    def shared(self, views: list[_View], start: int, end: int, eq: _TopEqual) -> None:
        """Positions [start, end) where every run of the group chose the same token."""
        m = len(views)
        v0 = views[0]
        if any(v.k != v0.k for v in views):
            same = np.zeros(end - start, dtype=bool)
        else:
            same = eq(v0, views[1], start, end)
            for v in views[2:]:
                same = same & eq(v0, v, start, end)
        if same.all():
            sel: slice | np.ndarray = slice(start, end)
        else:
            sel = np.flatnonzero(same) + start
        if end > start and same.any():
            z = views[0].lp[sel]
            for v in views[1:]:
                z = z + v.lp[sel]
            z = z / m
            hit = v0.tok[sel] == v0.chosen[sel, None]
            has = hit.any(1)
            if has.all():
                self.add(z, np.where(hit, float(m), 0.0))
            else:
                self.tail += m * int((~has).sum())
                counts = np.where(hit & has[:, None], float(m), 0.0)
                self.add(z[has], counts[has])
        for s in np.flatnonzero(~same) + start:
            self.split(views, [int(s)] * m, [str(views[0].chosen[s])] * m)

    def split(self, views: list[_View], rows: list[int], chosen: list[str]) -> None:
        z, counts, tail = _slow_node(views, rows, chosen)
        self.tail += tail
        self.add(z[None, :], counts[None, :])

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


def _trie_nodes(runs: tuple[Run, ...], views: list[_View | None], eq: _TopEqual) -> Nodes | None:
    """Walk the token trie of the runs that report top-k; collect nodes reached by >= 2 of them."""
    idx = [i for i, v in enumerate(views) if v is not None]
    if len(idx) < 2:
        return None
    nb = _NodeBuilder()
    stack: list[tuple[list[int], int]] = [(idx, 0)]
    while stack:
        group, start = stack.pop()
        vs = [views[i] for i in group]
        gv = [v for v in vs if v is not None]
        n = min(len(runs[i].tokens) for i in group)
        ch = np.stack([v.chosen[start:n] for v in gv])
        diff = (ch != ch[:1]).any(0)
        end = start + int(np.argmax(diff)) if diff.any() else n
        if end > start:
            nb.shared(gv, start, end, eq)
        if end < n:
            chosen = [str(v.chosen[end]) for v in gv]
            nb.split(gv, [end] * len(gv), chosen)
            by_tok: dict[str, list[int]] = {}
            for i, c in zip(group, chosen, strict=True):
                by_tok.setdefault(c, []).append(i)
            stack.extend((g, end + 1) for g in by_tok.values() if len(g) >= 2)
        else:
            rest = [i for i in group if len(runs[i].tokens) > n]
            if len(rest) >= 2:
                stack.append((rest, n))
    return nb.nodes()


def _jitter(
    va: _View, vb: _View, n: int, eq: _TopEqual
) -> tuple[float, int, int, list[np.ndarray]]:
    """(Σδ², positions, bit-identical positions, reference gaps) over the first n positions.

    δ = difference between the runs of the gap between the reference top-1 and top-2 tokens.
    """
    if n <= 0:
        return 0.0, 0, 0, []
    if va.k == vb.k:
        same = eq(va, vb, 0, n)
        ident = same & (va.lp[:n] == vb.lp[:n]).all(1)
    else:
        same = ident = np.zeros(n, dtype=bool)
    ga = va.lp[:n, 0] - va.lp[:n, 1] if va.k >= 2 else np.full(n, np.nan)
    gb = vb.lp[:n, 0] - vb.lp[:n, 1] if vb.k >= 2 else np.full(n, np.nan)
    if same.all():
        d, ref = ga - gb, (ga + gb) / 2
    else:
        d, ref = (ga - gb)[same], ((ga + gb) / 2)[same]
    ok = np.isfinite(d)
    if ok.all():
        sq, pos, gaps = float(d @ d), int(d.size), [ref]
    else:
        sq, pos, gaps = float(d[ok] @ d[ok]), int(ok.sum()), [ref[ok]]
    extra: list[float] = []
    for s in np.flatnonzero(~same):
        a = dict(zip(va.tok[s].tolist(), va.lp[s].tolist(), strict=True))
        b = dict(zip(vb.tok[s].tolist(), vb.lp[s].tolist(), strict=True))
        u = sorted(set(a) & set(b) - {_PAD}, key=lambda t: -(a[t] + b[t]))
        if len(u) < 2:
            continue
        t1, t2 = u[0], u[1]
        dd = (a[t1] - a[t2]) - (b[t1] - b[t2])
        if np.isfinite(dd):
            sq += dd * dd
            pos += 1
            extra.append((a[t1] - a[t2] + b[t1] - b[t2]) / 2)
    if extra:
        gaps.append(np.array(extra))
    return sq, pos, int(ident.sum()), gaps


def compare_trial(trial: Trial, *, with_nodes: bool = True) -> Comparison:
    """Pairwise statistics, jitter and (optionally) likelihood nodes of one trial (any number
    of runs; the general trie walk). `estimator.pair.compare_fast` takes a faster path for two
    runs and equals this function (tests/estimator/test_fast_path.py)."""
    runs = trial.runs
    views: list[_View | None] = [_View(r) if r.has_top_logprobs else None for r in runs]
    eq = _TopEqual()
    first: list[int] = []
    ex: list[Divergence] = []
    risk = exact = 0
    sq, jpos, jid = 0.0, 0, 0
    jgaps: list[np.ndarray] = []
    for a in range(len(runs)):
        for b in range(a + 1, len(runs)):
            ra, rb = runs[a], runs[b]
            k, div, at_risk = _pair_divergence(ra, rb)
            risk += at_risk
            if ra.tokens == rb.tokens and ra.text == rb.text:
                exact += 1
            if div:
                first.append(k)
                ta = ra.tokens[k] if k < len(ra.tokens) else ""
                tb = rb.tokens[k] if k < len(rb.tokens) else ""
                ex.append(Divergence(k, ta, tb, _lp_at(ra, k), _lp_at(rb, k), a, b))
            va, vb = views[a], views[b]
            if va is not None and vb is not None:
                n = min(at_risk, len(ra.tokens), len(rb.tokens))
                s_, p_, i_, g_ = _jitter(va, vb, n, eq)
                sq, jpos, jid = sq + s_, jpos + p_, jid + i_
                jgaps.extend(g_)
    nodes = _trie_nodes(runs, views, eq) if with_nodes else None
    return Comparison(
        pairs=trial.n_pairs,
        diverged=len(first),
        tokens_at_risk=risk,
        exact_match_pairs=exact,
        first_divergences=tuple(first),
        exemplars=tuple(ex),
        jitter_sq_sum=sq,
        jitter_positions=jpos,
        jitter_identical_positions=jid,
        jitter_gaps=np.concatenate(jgaps) if jgaps else np.zeros(0),
        nodes=nodes,
        token_collisions=sum(r.token_collisions for r in runs),
    )


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
