"""Fast path of `compare_trial` for the proxy's common trial: exactly two runs (primary + one
replay) that both report top-k logprobs with one k at every position.

The trie of two runs is their shared prefix plus at most one split node, so no trie walk is
needed: the first m positions (m = positions at risk, capped at the common length) are turned into
arrays once, and one vectorised pass over them gives the jitter sums and the trie nodes together.
Only the positions that can matter are converted (nothing after the first divergence). Positions
whose two top-k token lists differ, and the split node, take the node-by-node union rule of
`compare.py`. Results equal `compare.compare_trial` (tests/estimator/test_fast_path.py);
`None` means "not applicable, use the general path".
"""

from __future__ import annotations

import math
from itertools import chain, compress
from operator import eq, itemgetter, ne

import numpy as np

from estimator.compare import (
    Comparison,
    Divergence,
    _lp_at,
    _NodeBuilder,
    _pair_divergence,
    compare_trial,
)
from estimator.model import TopLogprobs, Trial

_TOKEN = itemgetter(0)
_LOGPROB = itemgetter(1)


def _uniform_k(top: tuple[TopLogprobs, ...]) -> int:
    """k when every position reports exactly k >= 2 alternatives, else 0."""
    if not top:
        return 0
    lens = set(map(len, top))
    if len(lens) != 1:
        return 0
    k = lens.pop()
    return k if k >= 2 else 0


def _union_node(
    tops: tuple[TopLogprobs, TopLogprobs], chosen: tuple[str, str]
) -> tuple[np.ndarray, np.ndarray, int]:
    """Reference logits over the union of the two runs' tokens at one node (a token missing from
    a run's top-k takes that run's smallest reported logprob): (ẑ sorted descending, counts,
    tail choices). Same rule and order as compare._slow_node."""
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


def _jitter_union(a_top: TopLogprobs, b_top: TopLogprobs) -> tuple[float, float] | None:
    """(δ, reference gap) at a position whose top-k token lists differ: the top two tokens by
    mean logprob among those both runs report (as compare._jitter)."""
    a, b = dict(a_top), dict(b_top)
    u = sorted(set(a) & set(b), key=lambda t: -(a[t] + b[t]))
    if len(u) < 2:
        return None
    t1, t2 = u[0], u[1]
    dd = (a[t1] - a[t2]) - (b[t1] - b[t2])
    if not np.isfinite(dd):
        return None
    return dd, (a[t1] - a[t2] + b[t1] - b[t2]) / 2


def _chosen_slots(tok: list[str], k: int, chosen: tuple[str, ...], m: int) -> np.ndarray:
    """Index in the top-k of the chosen token at each of the first m positions (−1: tail)."""
    slots = np.zeros(m, dtype=np.intp)
    first = tok[0::k]
    if first == list(chosen[:m]):
        return slots
    miss = np.flatnonzero(np.fromiter(map(ne, first, chosen[:m]), bool, m))
    for s in miss.tolist():
        row = tok[s * k : (s + 1) * k]
        c = chosen[s]
        slots[s] = row.index(c) if c in row else -1
    return slots


def _add_rows(nb: _NodeBuilder, z: np.ndarray, sa: np.ndarray, sb: np.ndarray) -> None:
    """Nodes where both runs report the same top-k tokens: reference logits z (rows, k); run a
    chose top-k entry sa[row], run b sb[row] (−1: a tail token, not scored). Rows already most
    likely first with finite logprobs (the usual case) are added directly: gaps z₀ − z_j, weight
    = scored choices, linear term Σ (z₀ − z_chosen), exactly what _NodeBuilder.add computes;
    other blocks go through it."""
    ha, hb = sa >= 0, sb >= 0
    w = ha.astype(float) + hb
    if w.sum() != 2 * w.size:  # some choice in the tail
        keep = w > 0
        nb.tail += int((~ha).sum() + (~hb).sum())
        z, sa, sb, w = z[keep], sa[keep], sb[keep], w[keep]
    if z.shape[0] == 0:
        return
    gaps = z[:, :1] - z[:, 1:]
    # most likely first (gaps >= 0, non-decreasing) and finite (a finite sum implies it; an
    # overflowing sum only sends the block to the general rule)
    if not (
        np.isfinite(gaps.sum()) and (gaps[:, 0] >= 0).all() and (gaps[:, 1:] >= gaps[:, :-1]).all()
    ):
        counts = np.zeros(z.shape)
        r = np.arange(z.shape[0])
        np.add.at(counts, (r[sa >= 0], sa[sa >= 0]), 1.0)
        np.add.at(counts, (r[sb >= 0], sb[sb >= 0]), 1.0)
        nb.add(z, counts)
        return
    for sl in (sa, sb):
        off = np.flatnonzero(sl > 0)  # rows where this run did not choose the argmax
        if off.size:
            nb.linear += float(gaps[off, sl[off] - 1].sum())
    nb.gaps.append(gaps)
    nb.weights.append(w)
    nb.min_k = min(nb.min_k, z.shape[1])


def _differing_rows_py(
    rows: list[int],
    top_a: tuple[TopLogprobs, ...],
    top_b: tuple[TopLogprobs, ...],
    chosen: tuple[tuple[str, ...], tuple[str, ...]],
) -> tuple[list[list[float]], list[float], float, int, int, list[float], list[float]] | None:
    """Positions ``rows`` where the two top-k token lists differ (reordered or swapped tokens,
    common on a noisy server), in plain Python (a handful of rows of k entries: cheaper than any
    numpy call per row): the union rule of `_union_node` (same ẑ arithmetic, same stable order)
    and the jitter rule of `_jitter_union` (top two common tokens by summed logprob, ties in run
    a's order, as the vectorised rule had it).

    Returns (gap rows of the scored rows, most likely first without the argmax, unpadded;
    their weights; Σ chosen gaps; tail choices; smallest union size over scored rows (0: none);
    jitter δ and reference gap of the rows with two common tokens). None when a row has a
    non-finite logprob (those take the row-by-row numpy rule, which defines the edge cases)."""
    isfinite = math.isfinite
    gap_rows: list[list[float]] = []
    weights: list[float] = []
    linear = 0.0
    tail = 0
    min_u = 0
    jd: list[float] = []
    jr: list[float] = []
    ca_all, cb_all = chosen
    for s in rows:
        da = dict(top_a[s])
        db = dict(top_b[s])
        names = list(da)
        if da.keys() == db.keys():  # the same tokens reordered (the usual case)
            z = [(x + db[t]) / 2 for t, x in da.items()]
            both = names
        else:
            fa = min(da.values())
            fb = min(db.values())
            z = [(x + db.get(t, fb)) / 2 for t, x in da.items()]
            for t, x in db.items():
                if t not in da:
                    names.append(t)
                    z.append((fa + x) / 2)
            both = [t for t in names if t in da and t in db]
        if not isfinite(sum(z)):
            return None
        # ẑ most likely first; only the values matter (tied entries have equal gaps)
        zs = sorted(z, reverse=True)
        top = zs[0]
        w = 0.0
        for c in (ca_all[s], cb_all[s]):
            if c in da or c in db:
                w += 1.0
                linear += top - z[names.index(c)]
            else:
                tail += 1
        if w > 0:
            gap_rows.append([top - x for x in zs[1:]])
            weights.append(w)
            u = len(z)
            min_u = u if min_u == 0 else min(min_u, u)
        if len(both) >= 2:
            tot = {t: da[t] + db[t] for t in both}
            # stable: ties keep run a's order (reverse=True keeps equal items in order)
            t1, t2 = sorted(tot, key=tot.__getitem__, reverse=True)[:2]
            ga = da[t1] - da[t2]
            gb = db[t1] - db[t2]
            dd = ga - gb
            if isfinite(dd):
                jd.append(dd)
                jr.append((ga + gb) / 2)
    return gap_rows, weights, linear, tail, min_u, jd, jr


def compare_pair(trial: Trial, *, with_nodes: bool = True) -> Comparison | None:
    """`compare_trial` for two runs with uniform top-k (same k in both), else None."""
    if len(trial.runs) != 2:
        return None
    ra, rb = trial.runs
    top_a, top_b = ra.top_logprobs, rb.top_logprobs
    if top_a is None or top_b is None:
        return None
    k = _uniform_k(top_a)
    if k == 0 or _uniform_k(top_b) != k:
        return None
    pos, div, at_risk = _pair_divergence(ra, rb)
    n = min(len(ra.tokens), len(rb.tokens))
    m = min(at_risk, n)  # positions that feed jitter and nodes
    split = div and pos < n  # the pair's split node sits at pos = m − 1

    fa = list(chain.from_iterable(top_a[:m]))
    lpa = np.fromiter(map(_LOGPROB, fa), float, m * k).reshape(m, k)
    tka = list(map(_TOKEN, fa))
    identical = top_a[:m] == top_b[:m]  # bit-identical reports (deterministic stack): convert once
    if identical:
        lpb, tkb = lpa, tka
    else:
        fb = list(chain.from_iterable(top_b[:m]))
        lpb = np.fromiter(map(_LOGPROB, fb), float, m * k).reshape(m, k)
        tkb = list(map(_TOKEN, fb))
    if identical or tka == tkb:
        diff: list[int] = []
    else:  # rows whose token lists differ: a few, found without a numpy call per row
        diff = sorted({i // k for i in compress(range(m * k), map(ne, tka, tkb))})
    if diff:
        same = np.ones(m, dtype=bool)
        same[diff] = False
    # Jitter (science.md §3c) over the m positions.
    ga = lpa[:, 0] - lpa[:, 1]
    gb = lpb[:, 0] - lpb[:, 1]
    d = ga - gb
    ref = (ga + gb) / 2
    if diff:
        d, ref = d[same], ref[same]
    sq = float(d @ d)
    if np.isfinite(sq):  # every δ finite
        jpos, jgaps = int(d.size), ref
    else:
        ok = np.isfinite(d)
        sq, jpos, jgaps = float(d[ok] @ d[ok]), int(ok.sum()), ref[ok]
    # bit-identical positions: same tokens and same logprobs (tuple equality per position)
    ident = m if identical else sum(map(eq, top_a[:m], top_b[:m]))
    py = _differing_rows_py(diff, top_a, top_b, (ra.tokens, rb.tokens)) if diff else None
    if py is not None:
        jd, jr = py[5], py[6]
        if jd:
            for x in jd:  # in row order, as the general path adds them
                sq += x * x
            jpos += len(jd)
            jgaps = np.concatenate([jgaps, jr])
    elif diff:
        extra = []
        for s in diff:
            r = _jitter_union(top_a[s], top_b[s])
            if r is not None:
                sq += r[0] * r[0]
                jpos += 1
                extra.append(r[1])
        if extra:
            jgaps = np.concatenate([jgaps, np.array(extra)])

    nodes = None
    if with_nodes:
        nb = _NodeBuilder()
        # Rows with the same top-k tokens (the shared prefix and, usually, the split node) in
        # one block; the rest with the union rule.
        sa = _chosen_slots(tka, k, ra.tokens, m)
        sb = sa.copy()
        if split and pos not in diff:
            row, c = tkb[pos * k : (pos + 1) * k], rb.tokens[pos]
            sb[pos] = row.index(c) if c in row else -1
        if diff:
            rows = np.flatnonzero(same)
            _add_rows(nb, (lpa[rows] + lpb[rows]) / 2, sa[rows], sb[rows])
        else:
            _add_rows(nb, (lpa + lpb) / 2, sa, sb)
        if py is not None:
            gap_rows, ws, lin, tail, min_u = py[:5]
            nb.tail += tail
            nb.linear += lin
            if ws:
                width = max(map(len, gap_rows))
                inf = math.inf
                nb.gaps.append(np.array([r_ + [inf] * (width - len(r_)) for r_ in gap_rows]))
                nb.weights.append(np.array(ws))
                nb.min_k = min(nb.min_k, min_u)
        elif diff:
            for s in diff:
                zs, cs, tail = _union_node((top_a[s], top_b[s]), (ra.tokens[s], rb.tokens[s]))
                nb.tail += tail
                nb.add(zs[None, :], cs[None, :])
        nodes = nb.nodes()

    first: tuple[int, ...] = ()
    ex: tuple[Divergence, ...] = ()
    if div:
        first = (pos,)
        ta = ra.tokens[pos] if pos < len(ra.tokens) else ""
        tb = rb.tokens[pos] if pos < len(rb.tokens) else ""
        ex = (Divergence(pos, ta, tb, _lp_at(ra, pos), _lp_at(rb, pos), 0, 1),)
    return Comparison(
        pairs=1,
        diverged=int(div),
        tokens_at_risk=at_risk,
        exact_match_pairs=int(ra.tokens == rb.tokens and ra.text == rb.text),
        first_divergences=first,
        exemplars=ex,
        jitter_sq_sum=sq,
        jitter_positions=jpos,
        jitter_identical_positions=ident,
        jitter_gaps=jgaps,
        nodes=nodes,
    )


def compare_fast(trial: Trial, *, with_nodes: bool = True) -> Comparison:
    """`compare.compare_trial`, through the two-run fast path when it applies."""
    c = compare_pair(trial, with_nodes=with_nodes) if len(trial.runs) == 2 else None
    return c if c is not None else compare_trial(trial, with_nodes=with_nodes)
