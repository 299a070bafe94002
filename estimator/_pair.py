"""Fast path of `estimator.compare.compare_trial` for the proxy's common trial: exactly two
runs (primary + one replay) that both report top-k logprobs with one k at every position.

The trie of two runs is their shared prefix plus at most one split node, so no trie walk is
needed: the first m positions (m = positions at risk, capped at the common length) are turned into
arrays once (nothing after the first divergence), and one vectorised pass over them gives the
jitter sums and the trie nodes together. Positions whose two top-k token lists differ (a few per
pair on a noisy server) are handled in plain Python: the same tokens reordered are aligned into
the block, other token sets take the node-by-node union rule of `estimator.nodes`. Results equal
the general path's (estimator._trie; tests/estimator/test_fast_path.py); `None` means "not
applicable, use the general path". Package-private: call `compare_trial`."""

from __future__ import annotations

import math
from itertools import chain, compress, count
from operator import add, eq, itemgetter, ne
from typing import Any

import numpy as np

from estimator.comparison import Comparison, Divergence, pair_divergence
from estimator.model import TopLogprobs, Trial
from estimator.nodes import NodeBuilder, union_node

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


def _jitter_union(a_top: TopLogprobs, b_top: TopLogprobs) -> tuple[float, float] | None:
    """(δ, reference gap) at a position whose top-k token lists differ: the top two tokens by
    mean logprob among those both runs report (as the general path's jitter)."""
    a, b = dict(a_top), dict(b_top)
    u = sorted(set(a) & set(b), key=lambda t: -(a[t] + b[t]))
    if len(u) < 2:
        return None
    t1, t2 = u[0], u[1]
    dd = (a[t1] - a[t2]) - (b[t1] - b[t2])
    if not np.isfinite(dd):
        return None
    return dd, (a[t1] - a[t2] + b[t1] - b[t2]) / 2


def _differing_rows_py(
    rows: list[int],
    top_a: tuple[TopLogprobs, ...],
    top_b: tuple[TopLogprobs, ...],
    chosen: tuple[tuple[str, ...], tuple[str, ...]],
    k: int,
) -> _Differing | None:
    """Positions ``rows`` where the two top-k token lists differ (common on a noisy server), in
    plain Python (a handful of rows of k entries: cheaper than numpy calls per row).

    A row whose two lists hold the same k distinct tokens in another order is *aligned*: run b's
    logprobs are put in run a's token order, and the row then joins the block of rows with the
    same tokens (its ẑ is the same per-token mean as the union rule's; the block sorts rows that
    are not most likely first). Other rows take the union rule of `union_node` here (same ẑ
    arithmetic; only the sorted values matter, tied entries having equal gaps). Jitter of every
    row: the rule of `_jitter_union` (the two common tokens with the largest summed logprob, ties
    in run a's order), in row order as the general path appends them.
    None when a row has a non-finite logprob (those take the row-by-row numpy rule, which
    defines the edge cases)."""
    isfinite = math.isfinite
    out = _Differing()
    ca_all, cb_all = chosen
    for s in rows:
        ra_, rb_ = top_a[s], top_b[s]
        db = dict(rb_)
        ta = list(map(_TOKEN, ra_))
        lbo: list[Any] = list(map(db.get, ta))  # None: not reported by run b
        if len(db) == k and None not in lbo and len(set(ta)) == k:
            la = list(map(_LOGPROB, ra_))
            tot = list(map(add, la, lbo))
            if isfinite(sum(tot)):
                out.aligned.append(s)
                out.lb_aligned.append(lbo)
                i1 = tot.index(max(tot))  # first maximum = a stable descending sort's first
                tot[i1] = -math.inf
                i2 = tot.index(max(tot))
                ga = la[i1] - la[i2]
                gb = lbo[i1] - lbo[i2]
                dd = ga - gb
                if isfinite(dd):
                    out.jd.append(dd)
                    out.jr.append((ga + gb) / 2)
                continue
        out.union.append(s)
        da = dict(ra_)
        names = list(da)
        la = list(da.values())
        fa = min(la)
        fb = min(db.values())
        lb = [db.get(t, fb) for t in names]
        z = [(x + y) / 2 for x, y in zip(la, lb, strict=True)]
        common = [i for i, t in enumerate(names) if t in db]
        for t, x in db.items():
            if t not in da:
                names.append(t)
                z.append((fa + x) / 2)
        if not isfinite(sum(z)):
            return None
        zs = sorted(z, reverse=True)  # ẑ most likely first
        top = zs[0]
        w = 0.0
        for c in (ca_all[s], cb_all[s]):
            if c in da or c in db:
                w += 1.0
                out.linear += top - z[names.index(c)]
            else:
                out.tail += 1
        if w > 0:
            out.gap_rows.append([top - x for x in zs[1:]])
            out.weights.append(w)
            u = len(z)
            out.min_u = u if out.min_u == 0 else min(out.min_u, u)
        if len(common) >= 2:
            tot = [la[i] + lb[i] for i in common]
            i1 = tot.index(max(tot))
            tot[i1] = -math.inf
            i2 = tot.index(max(tot))
            i1, i2 = common[i1], common[i2]
            ga = la[i1] - la[i2]
            gb = lb[i1] - lb[i2]
            dd = ga - gb
            if isfinite(dd):
                out.jd.append(dd)
                out.jr.append((ga + gb) / 2)
    return out


class _Differing:
    """What `_differing_rows_py` found (see there)."""

    __slots__ = (
        "aligned",
        "gap_rows",
        "jd",
        "jr",
        "lb_aligned",
        "linear",
        "min_u",
        "tail",
        "union",
        "weights",
    )

    def __init__(self) -> None:
        self.aligned: list[int] = []  # rows joining the same-token block
        self.lb_aligned: list[list[float]] = []  # run b's logprobs there, in run a's order
        self.union: list[int] = []  # rows scored here with the union rule:
        self.gap_rows: list[list[float]] = []  # gaps of the scored ones, most likely first
        self.weights: list[float] = []
        self.linear = 0.0
        self.tail = 0
        self.min_u = 0  # smallest union size among the scored ones (0: none)
        self.jd: list[float] = []  # jitter δ of every differing row with two common tokens
        self.jr: list[float] = []  # and its reference gap


def _slot(top: TopLogprobs, c: str) -> int:
    """Index of token c in one position's top-k (−1: a tail token)."""
    for j, (t, _) in enumerate(top):
        if t == c:
            return j
    return -1


def _same_rows(
    nb: NodeBuilder,
    z: np.ndarray,
    keep: np.ndarray | None,
    slots_a: dict[int, int],
    slots_b: dict[int, int],
) -> None:
    """Nodes at the positions where both runs report the same top-k tokens (in run a's order):
    reference logits z (m, k) (rows outside ``keep`` skipped; None: all rows); run a chose the
    top-k entry slots_a.get(row, 0), run b slots_b.get(row, 0) (−1: a tail token, not scored).
    With finite logprobs (the usual case) the block is added directly: gaps ẑ_max − ẑ_j in
    descending order of ẑ (rows that are not most likely first are sorted, one np.sort for the
    block), weight = scored choices, linear term Σ (ẑ_max − ẑ_chosen): exactly what
    NodeBuilder.add computes; otherwise the block goes through it."""
    tails = [r for r, j in chain(slots_a.items(), slots_b.items()) if j < 0]
    w = None
    if tails:
        w = np.full(z.shape[0], 2.0)
        for r in tails:
            w[r] -= 1.0
        nb.tail += len(tails)
        scored = w > 0
        keep = scored if keep is None else keep & scored
    zk = z if keep is None else z[keep]
    if zk.shape[0] == 0:
        return
    if not np.isfinite(zk.sum()):  # (an overflowing sum only sends the block here too)
        counts = np.zeros(z.shape)
        counts[:, 0] = 2.0
        for r, j in chain(slots_a.items(), slots_b.items()):
            counts[r, 0] -= 1.0
            if j >= 0:
                counts[r, j] += 1.0
        nb.add(zk, counts if keep is None else counts[keep])
        return
    c0 = lin0 = None  # entry-0 choices per row and ẑ_max − ẑ_0, when some row is not sorted
    if (zk[:, :-1] >= zk[:, 1:]).all():
        gaps = zk[:, :1] - zk[:, 1:]
    else:
        zs = np.sort(zk, axis=1)
        gaps = zs[:, -1:] - zs[:, -2::-1]
        lin0 = zs[:, -1] - zk[:, 0]  # ẑ_max − ẑ_0: exactly 0 on sorted rows
        c0 = np.full(z.shape[0], 2.0) if w is None else w.copy()
    for slots in (slots_a, slots_b):
        for r, j in slots.items():
            if j > 0 and (keep is None or keep[r]):
                zl = z[r].tolist()
                nb.linear += max(zl) - zl[j]
                if c0 is not None:
                    c0[r] -= 1.0
    if c0 is not None and lin0 is not None:
        nb.linear += float((c0 if keep is None else c0[keep]) @ lin0)
    nb.gaps.append(gaps)
    if w is None:
        nb.weights.append(np.full(zk.shape[0], 2.0))
    else:
        nb.weights.append(w if keep is None else w[keep])
    nb.min_k = min(nb.min_k, z.shape[1])


def pair_comparison(trial: Trial, *, with_nodes: bool = True) -> Comparison | None:
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
    pos, div, at_risk = pair_divergence(ra, rb)
    n = min(len(ra.tokens), len(rb.tokens))
    m = min(at_risk, n)  # positions that feed jitter and nodes
    split = div and pos < n  # the pair's split node sits at pos = m − 1
    head_a, head_b = top_a[:m], top_b[:m]

    fa = list(chain.from_iterable(head_a))
    lpa = np.fromiter(map(_LOGPROB, fa), float, m * k).reshape(m, k)
    identical = head_a == head_b  # bit-identical reports (deterministic stack): convert once
    diff: list[int] = []
    if identical:
        lpb = lpa
    else:
        fb = list(chain.from_iterable(head_b))
        lpb = np.fromiter(map(_LOGPROB, fb), float, m * k).reshape(m, k)
        # rows whose token lists differ: a few, found without a Python step per token
        tok_ne = map(ne, map(_TOKEN, fa), map(_TOKEN, fb))
        diff = sorted({i // k for i in compress(count(), tok_ne)})

    # Jitter (science.md §3c) over the m positions: rows with the same token lists here, the
    # differing rows below (in row order, after these, as the general path appends them).
    ga = lpa[:, 0] - lpa[:, 1]
    gb = lpb[:, 0] - lpb[:, 1]
    d = ga - gb
    ref = (ga + gb) / 2
    if diff:
        same = np.ones(m, dtype=bool)
        same[diff] = False
        d, ref = d[same], ref[same]
    sq = float(d @ d)
    if np.isfinite(sq):  # every δ finite
        jpos, jgaps = int(d.size), ref
    else:
        ok = np.isfinite(d)
        sq, jpos, jgaps = float(d[ok] @ d[ok]), int(ok.sum()), ref[ok]
    # bit-identical positions: same tokens and same logprobs (tuple equality per position)
    ident = m if identical else sum(map(eq, head_a, head_b))
    dr = _differing_rows_py(diff, top_a, top_b, (ra.tokens, rb.tokens), k) if diff else None
    if dr is not None:
        for x in dr.jd:  # in row order, as the general path adds them
            sq += x * x
        if dr.jd:
            jpos += len(dr.jd)
            jgaps = np.concatenate([jgaps, dr.jr])
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
        nb = NodeBuilder()
        # One block: rows with the same top-k tokens (the shared prefix and, usually, the split
        # node) and aligned rows; the rest with the union rule. Run a chose entry 0 (the
        # argmax) except at the positions found here; run b chose as run a before the split.
        outside = diff if dr is None else dr.union  # rows not in the block
        keep = None
        if outside:
            keep = np.ones(m, dtype=bool)
            keep[outside] = False
        if dr is not None and dr.aligned:
            lpb[dr.aligned] = dr.lb_aligned  # lpb is this call's own array
        ca = ra.tokens
        miss = compress(count(), map(ne, map(_TOKEN, fa[::k]), ca[:m]))
        slots_a = {s: _slot(head_a[s], ca[s]) for s in miss}
        if outside:
            for s in outside:
                slots_a.pop(s, None)
        slots_b = slots_a
        if split and (keep is None or keep[pos]):
            slots_b = dict(slots_a)
            slots_b.pop(pos, None)
            jb = _slot(head_a[pos], rb.tokens[pos])  # same tokens as run b's, in a's order
            if jb != 0:
                slots_b[pos] = jb
        _same_rows(nb, lpa if identical else (lpa + lpb) / 2, keep, slots_a, slots_b)
        if dr is not None:
            nb.tail += dr.tail
            nb.linear += dr.linear
            if dr.weights:
                width = max(k - 1, max(map(len, dr.gap_rows)))
                inf = math.inf
                rows_ = [r_ + [inf] * (width - len(r_)) for r_ in dr.gap_rows]
                nb.gaps.append(np.array(rows_))
                nb.weights.append(np.array(dr.weights))
                nb.min_k = min(nb.min_k, dr.min_u)
        elif diff:
            for s in diff:
                zs, cs, tail = union_node((top_a[s], top_b[s]), (ra.tokens[s], rb.tokens[s]))
                nb.tail += tail
                nb.add(zs[None, :], cs[None, :])
        nodes = nb.nodes()

    first: tuple[int, ...] = ()
    ex: tuple[Divergence, ...] = ()
    if div:
        first = (pos,)
        ex = (Divergence.of_pair(ra, rb, pos, 0, 1),)
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
        token_collisions=ra.token_collisions + rb.token_collisions,
        scored=nodes is not None and nodes.weights.size > 0,
    )
