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

from itertools import chain
from operator import itemgetter, ne

import numpy as np

from estimator.compare import (
    Comparison,
    Divergence,
    _lp_at,
    _NodeBuilder,
    _pair_divergence,
    _row_all,
    _row_sum,
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


def _differing_rows(
    rows: np.ndarray,
    tka: list[str],
    tkb: list[str],
    lpa: np.ndarray,
    lpb: np.ndarray,
    chosen: tuple[tuple[str, ...], tuple[str, ...]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Positions ``rows`` where the two top-k token lists differ (reordered or swapped tokens,
    common on a noisy server), vectorised: the union rule of `_union_node` and the jitter rule
    of `_jitter_union` on all rows at once.

    Returns (z (d, 2k): run a's tokens then run b's tokens not reported by a, −inf for the
    others; counts (d, 2k); jitter δ per row (NaN: no two common tokens); reference gap per row).
    Tokens are matched through their hashes and every match is then confirmed by string
    equality; None (use the row-by-row rule) if any is not confirmed (a hash collision)."""
    d, k = rows.size, lpa.shape[1]
    flat = (rows[:, None] * k + np.arange(k)).ravel()
    ta = np.array(tka, dtype=object)[flat].reshape(d, k)
    tb = np.array(tkb, dtype=object)[flat].reshape(d, k)
    ha = np.fromiter(map(hash, ta.ravel()), np.int64, d * k).reshape(d, k)
    hb = np.fromiter(map(hash, tb.ravel()), np.int64, d * k).reshape(d, k)
    ca = np.array([chosen[0][s] for s in rows.tolist()], dtype=object)
    cb = np.array([chosen[1][s] for s in rows.tolist()], dtype=object)
    hca = np.fromiter(map(hash, ca), np.int64, d)
    hcb = np.fromiter(map(hash, cb), np.int64, d)
    match = ha[:, :, None] == hb[:, None, :]  # (d, k, k)
    a_in_b = match.any(2)
    b_in_a = match.any(1)
    jb = match.argmax(2)
    r = np.arange(d)[:, None]
    # Confirm every hash match by string equality (exactness against collisions).
    if not (ta[a_in_b] == tb[r, jb][a_in_b]).all():
        return None
    la, lb = lpa[rows], lpb[rows]
    xb = np.where(a_in_b, lb[r, jb], lb.min(1)[:, None])
    za = (la + xb) / 2
    zb = np.where(b_in_a, -np.inf, (la.min(1)[:, None] + lb) / 2)
    z = np.concatenate([za, zb], 1)
    counts = np.zeros((d, 2 * k))
    for hc, c in ((hca, ca), (hcb, cb)):
        in_a = ha == hc[:, None]
        in_b = (hb == hc[:, None]) & ~b_in_a
        ia, ib = in_a.argmax(1), in_b.argmax(1)
        slot = np.where(in_a.any(1), ia, np.where(in_b.any(1), k + ib, -1))
        hit = slot >= 0
        names = np.where(slot < k, ta[r[:, 0], np.minimum(ia, k - 1)], tb[r[:, 0], ib])
        if not (names[hit] == c[hit]).all():
            return None
        counts[np.flatnonzero(hit), slot[hit]] += 1.0
    # Jitter: the two common tokens with the largest summed logprob.
    tot = np.where(a_in_b, la + xb, -np.inf)
    order = np.argsort(-tot, axis=1, kind="stable")[:, :2]
    a12 = np.take_along_axis(la, order, 1)
    b12 = np.take_along_axis(xb, order, 1)
    ga, gb = a12[:, 0] - a12[:, 1], b12[:, 0] - b12[:, 1]
    dd = ga - gb
    ok = (a_in_b.sum(1) >= 2) & np.isfinite(dd)
    return z, counts, np.where(ok, dd, np.nan), (ga + gb) / 2


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
        same = np.ones(m, dtype=bool)
    else:
        same = _row_all(~np.fromiter(map(ne, tka, tkb), bool, m * k).reshape(m, k))
    all_same = bool(same.all())

    # Jitter (science.md §3c) over the m positions.
    ga = lpa[:, 0] - lpa[:, 1]
    gb = lpb[:, 0] - lpb[:, 1]
    d = ga - gb
    ref = (ga + gb) / 2
    if not all_same:
        d, ref = d[same], ref[same]
    sq = float(d @ d)
    if np.isfinite(sq):  # every δ finite
        jpos, jgaps = int(d.size), ref
    else:
        ok = np.isfinite(d)
        sq, jpos, jgaps = float(d[ok] @ d[ok]), int(ok.sum()), ref[ok]
    if identical:
        ident = m
    else:
        eq = lpa == lpb
        ident = int(same.sum()) if eq.all() else int((same & _row_all(eq)).sum())
    diff = None if all_same else np.flatnonzero(~same)
    vec = None
    if diff is not None:
        vec = _differing_rows(diff, tka, tkb, lpa, lpb, (ra.tokens, rb.tokens))
    if vec is not None:
        jd, jr = vec[2], vec[3]
        ok = ~np.isnan(jd)
        if ok.any():
            sq += float(jd[ok] @ jd[ok])
            jpos += int(ok.sum())
            jgaps = np.concatenate([jgaps, jr[ok]])
    elif diff is not None:
        extra = []
        for s in diff.tolist():
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
        # one block; the rest node by node with the union rule.
        rows = slice(0, m) if all_same else np.flatnonzero(same)
        sa = _chosen_slots(tka, k, ra.tokens, m)
        sb = sa.copy()
        if split and same[pos]:
            row, c = tkb[pos * k : (pos + 1) * k], rb.tokens[pos]
            sb[pos] = row.index(c) if c in row else -1
        z = (lpa[rows] + lpb[rows]) / 2
        _add_rows(nb, z, sa[rows], sb[rows])
        if vec is not None:
            w = _row_sum(vec[1])
            nb.tail += int((2 - w).sum())
            keep = w > 0  # rows without a scored choice add nothing (not even to min_k)
            if keep.any():
                nb.add(vec[0][keep], vec[1][keep])
        elif diff is not None:
            for s in diff.tolist():
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
