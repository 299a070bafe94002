"""The general comparison path of `estimator.compare.compare_trial`: any number of runs, any
top-k widths. The runs' token trie is walked group by group (runs that share a prefix); shared
stretches are reduced in blocks, split nodes by the union rule (estimator.nodes). Package-private:
call `compare_trial`."""

from __future__ import annotations

from itertools import chain

import numpy as np

from estimator.comparison import Comparison, Divergence, pair_divergence
from estimator.model import Run, Trial
from estimator.nodes import NodeBuilder, Nodes, rank_choices

_PAD = "\x00"  # padding token for positions that report fewer than k alternatives


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


def _shared(nb: NodeBuilder, views: list[_View], start: int, end: int, eq: _TopEqual) -> None:
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
            nb.add(z, np.where(hit, float(m), 0.0))
        else:
            nb.tail += m * int((~has).sum())
            counts = np.where(hit & has[:, None], float(m), 0.0)
            nb.add(z[has], counts[has])
    for s in np.flatnonzero(~same) + start:
        _split(nb, views, [int(s)] * m, [str(views[0].chosen[s])] * m)


def _split(nb: NodeBuilder, views: list[_View], rows: list[int], chosen: list[str]) -> None:
    z, counts, tail = _slow_node(views, rows, chosen)
    nb.tail += tail
    nb.add(z[None, :], counts[None, :])


def _trie_nodes(runs: tuple[Run, ...], views: list[_View | None], eq: _TopEqual) -> Nodes | None:
    """Walk the token trie of the runs that report top-k; collect nodes reached by >= 2 of them."""
    idx = [i for i, v in enumerate(views) if v is not None]
    if len(idx) < 2:
        return None
    nb = NodeBuilder()
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
            _shared(nb, gv, start, end, eq)
        if end < n:
            chosen = [str(v.chosen[end]) for v in gv]
            _split(nb, gv, [end] * len(gv), chosen)
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


def trie_comparison(trial: Trial, *, with_nodes: bool = True) -> Comparison:
    """`estimator.compare.compare_trial` by the general trie walk (any number of runs)."""
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
            k, div, at_risk = pair_divergence(ra, rb)
            risk += at_risk
            if ra.tokens == rb.tokens and ra.text == rb.text:
                exact += 1
            if div:
                first.append(k)
                ex.append(Divergence.of_pair(ra, rb, k, a, b))
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
        scored=nodes is not None and nodes.weights.size > 0,
    )
