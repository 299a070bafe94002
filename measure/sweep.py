"""`tbg sweep`: T_bg, divergence, throughput and latency at several load levels; a safe level.

Design. At each level c the same prompts are answered ``--runs`` times with c requests in flight
(run-major order, so the runs of one prompt fall in different batches). T_bg at level c comes from
comparing the runs *of that level with each other*: each one is a draw of the stack at that load,
which is what T_bg means (an ideal model at temperature T, sampled twice, differs as much as two
runs do). Comparing level-c runs against level-1 runs instead would pair one loaded draw with one
quiet draw and understate the noise at c (and at level 1 the stack may still not be
deterministic). The level-1 comparison is still reported: ``differs_from_level1`` (the share of level-c runs
whose answer differs from the first level-1 answer to the same prompt) and ``t_vs_lowest`` (the
likelihood with that first level-1 run added to each prompt's runs: the equivalent temperature of
the load *changing*; real vLLM on CPU is nearly reproducible at a steady load and moves when the
load changes, see docs/measure.md).

Recommendation: the highest level such that it and every lower level keep both T_bg upper bounds
(steady, and vs the lowest level) under ``--ceiling``, with its throughput cost against the best
throughput measured.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import math
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from measure import analysis, compare, plots, report
from measure.advice import runs_to_decide, sweep_needs
from measure.client import Capabilities, Endpoint, make_client, one_run
from measure.common import (
    EXIT_INTERRUPTED,
    UsageError,
    add_endpoint_args,
    api_key,
    budget,
    nothing_measured,
    out_dir,
    positive_float,
    positive_int,
    session_id,
    sigint_sets,
)
from measure.execute import Outcome, execute, spread
from measure.progress import Progress
from measure.prompts import PromptError, PromptSet, load_prompts
from measure.store import Key, Record, Store, StoreError, pending
from proxy.shadow.config import ModelPolicy

DEFAULT_CEILING = ModelPolicy().ceiling  # one default: `tbg serve`, the alerts and the sweep
SWEEP_JSON = "sweep.json"
SWEEP_CSV = "sweep.csv"
SWEEP_PNG = "sweep.png"


def levels_arg(text: str) -> tuple[int, ...]:
    try:
        vals = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"comma-separated integers, e.g. 1,2,4,8: {text!r}"
        ) from None
    if not vals or vals[0] < 1:
        raise argparse.ArgumentTypeError("levels must be integers >= 1")
    return tuple(vals)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tbg sweep",
        description="T_bg, divergence, throughput and latency vs load (concurrency) of an "
        "OpenAI-compatible endpoint, and the highest load that keeps T_bg under a ceiling. "
        "See docs/measure.md.",
    )
    add_endpoint_args(p, default_max_tokens=32)
    p.add_argument("--levels", type=levels_arg, default=(1, 2, 4, 8, 16), help="concurrency levels")
    p.add_argument("--runs", type=positive_int, default=4, help="runs per prompt per level")
    p.add_argument(
        "--ceiling",
        type=positive_float,
        default=DEFAULT_CEILING,
        help=f"largest acceptable T_bg (default {DEFAULT_CEILING:g}, the proxy's and the alerts')",
    )
    compare.add_compare_args(p)
    return p


@dataclass(frozen=True)
class LevelRow:
    load: int  # concurrency
    runs: int
    planned: int
    t_bg: float | None
    t_lower: float | None
    t_upper: float | None
    # the same estimate with the lowest load's first run of each prompt added to the comparison
    t_vs_lowest: float | None
    t_vs_lowest_lower: float | None
    t_vs_lowest_upper: float | None
    t_jitter: float | None  # the jitter estimate: logprob noise, seen before tokens flip
    sigma_gap: float | None
    pairs: int
    diverged_pairs: int
    divergence_rate: float | None  # diverged pairs / pairs
    exact_match_rate: float | None
    differs_from_level1: float | None
    tokens: int
    throughput_tps: float | None
    latency_p50_s: float | None
    latency_p95_s: float | None


def _span(records: Sequence[Record]) -> float:
    """Wall time the level ran: per session, first send to last answer, summed over sessions."""
    by_s: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_s[r.session].append(r)
    return sum(
        max(r.started + r.latency_s for r in rs) - min(r.started for r in rs)
        for rs in by_s.values()
    )


def _nan_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _vs_lowest(recs: Sequence[Record], base: Sequence[Record], conf: float) -> Any:
    """Likelihood over each prompt's runs at this load together with its first run at the lowest
    load: the equivalent temperature of the load *changing* (see the module docstring)."""
    if not base or not analysis.has_logprobs(recs):
        return None
    try:
        res, _ = analysis.likelihood(analysis.trials_from([*base, *recs]), level=conf)
    except ValueError:
        return None
    return res


def level_row(
    level: int, recs: Sequence[Record], base_recs: Sequence[Record], planned: int, conf: float
) -> LevelRow:
    base = {r.key.prompt: r.tokens for r in base_recs}
    trials = analysis.trials_from(recs)
    vs = _vs_lowest(
        recs, [r for r in base_recs if any(x.key.prompt == r.key.prompt for x in recs)], conf
    )
    est: dict[str, Any] = {}
    if analysis.has_logprobs(recs):
        est, _, _ = analysis.estimates(trials, level=conf, with_logprobs=True)
    lk = est.get("likelihood")
    jt = est.get("jitter")
    mf = analysis.model_free(trials, level=conf, max_tokens=1) if trials else None
    compared = [r for r in recs if r.key.prompt in base]
    differs = sum(r.tokens != base[r.key.prompt] for r in compared)
    lat = np.array([r.latency_s for r in recs])
    tokens = sum(r.completion_tokens for r in recs)
    span = _span(recs)
    pairs = mf["pairs"] if mf else 0
    return LevelRow(
        load=level,
        runs=len(recs),
        planned=planned,
        t_bg=lk["estimate"] if lk else None,
        t_lower=lk["lower"] if lk else None,
        t_upper=lk["upper"] if lk else None,
        t_vs_lowest=None if vs is None else vs.estimate,
        t_vs_lowest_lower=None if vs is None else vs.lower,
        t_vs_lowest_upper=None if vs is None else vs.upper,
        t_jitter=jt["estimate"] if jt else None,
        sigma_gap=jt["diagnostics"]["sigma_gap"] if jt else None,
        pairs=pairs,
        diverged_pairs=mf["diverged_pairs"] if mf else 0,
        divergence_rate=mf["diverged_pairs"] / pairs if mf and pairs else None,
        exact_match_rate=_nan_none(mf["exact_match_rate"]) if mf else None,
        differs_from_level1=differs / len(compared) if compared else None,
        tokens=tokens,
        throughput_tps=tokens / span if span > 0 else None,
        latency_p50_s=float(np.percentile(lat, 50)) if lat.size else None,
        latency_p95_s=float(np.percentile(lat, 95)) if lat.size else None,
    )


@dataclass(frozen=True)
class Recommendation:
    load: int | None
    reason: str
    throughput_tps: float | None
    best_load: int | None
    best_throughput_tps: float | None
    throughput_cost: float | None  # 1 − chosen/best


def upper_bound(r: LevelRow) -> float | None:
    """The larger of the two upper bounds (steady load, and load changed from the lowest level):
    a load is only called safe when neither view shows more than the ceiling."""
    ups = [u for u in (r.t_upper, r.t_vs_lowest_upper) if u is not None]
    return max(ups) if ups else None


def recommend(rows: Sequence[LevelRow], ceiling: float) -> Recommendation:
    tput = [(r.throughput_tps, r.load) for r in rows if r.throughput_tps is not None]
    best_t, best_l = max(tput) if tput else (None, None)
    if all(r.t_upper is None for r in rows):
        return Recommendation(
            None, "no T_bg interval (no logprobs or no runs)", None, best_l, best_t, None
        )
    # Loads are only called safe from the bottom up: a level counts when it and every lower
    # level keep the upper bound under the ceiling (a pass above a failing level is not a safe
    # operating range, the service passes through the lower loads to get there).
    pick: LevelRow | None = None
    stop: tuple[LevelRow, float | None] | None = None
    for r in sorted(rows, key=lambda r: r.load):
        u = upper_bound(r)
        if u is None or u > ceiling:
            stop = (r, u)
            break
        pick = r
    if pick is None:
        why = f"no level keeps the T_bg upper bound under {ceiling:g}"
        if stop is not None and any(
            (u := upper_bound(r)) is not None and u <= ceiling for r in rows
        ):
            first, u = stop
            shown = "no interval" if u is None else f"upper bound {u:.3g}"
            why = f"the lowest level, load {first.load}, is not under {ceiling:g} ({shown})"
        return Recommendation(None, why, None, best_l, best_t, None)
    cost = None
    if pick.throughput_tps is not None and best_t:
        cost = 1 - pick.throughput_tps / best_t
    reason = (
        f"highest level whose T_bg upper bound {upper_bound(pick):.3g} <= ceiling {ceiling:g}, "
        "as at every lower level"
    )
    if stop is not None:
        r, u = stop
        shown = "has no interval" if u is None else f"upper bound {u:.3g}"
        reason += f"; load {r.load} {shown}"
    return Recommendation(pick.load, reason, pick.throughput_tps, best_l, best_t, cost)


def table(rows: Sequence[LevelRow], conf: float) -> str:
    f = report.fmt
    head = (
        f"{'load':>5} {'runs':>9} {'T_bg':>8} {f'{100 * conf:g}% interval':>20} {'diverged':>9} "
        f"{'≠level1':>8} {'vs-low ≤':>8} {'T_jitter':>8} {'tok/s':>8} {'p50 s':>7} {'p95 s':>7}"
    )
    out = [head]
    for r in rows:
        iv = "n/a" if r.t_upper is None else f"[{f(r.t_lower)}, {f(r.t_upper)}]"
        dv = "n/a" if r.divergence_rate is None else f"{r.diverged_pairs}/{r.pairs}"
        d1 = "n/a" if r.differs_from_level1 is None else f"{100 * r.differs_from_level1:.0f}%"
        out.append(
            f"{r.load:>5} {f'{r.runs}/{r.planned}':>9} {f(r.t_bg):>8} {iv:>20} {dv:>9} {d1:>8} {f(r.t_vs_lowest_upper):>8} {f(r.t_jitter):>8} "
            f"{f(r.throughput_tps):>8} {f(r.latency_p50_s):>7} {f(r.latency_p95_s):>7}"
        )
    return "\n".join(out)


def recommendation_line(rec: Recommendation) -> str:
    if rec.load is None:
        return f"recommendation: none ({rec.reason})"
    cost = (
        ""
        if rec.throughput_cost is None
        else (
            f"; throughput {report.fmt(rec.throughput_tps)} tok/s vs best {report.fmt(rec.best_throughput_tps)} "
            f"at load {rec.best_load} ({100 * rec.throughput_cost:.0f} % less)"
        )
    )
    return f"recommendation: load {rec.load} ({rec.reason}){cost}"


def write_outputs(
    d: Path, rows: Sequence[LevelRow], rec: Recommendation, data: dict[str, Any]
) -> list[str]:
    report.write_json(d / SWEEP_JSON, data)
    with (d / SWEEP_CSV).open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(asdict(rows[0]).keys()) if rows else ["level"])
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if v is None else v for k, v in asdict(r).items()})
    if not rows:
        return []
    try:
        plots.plot_sweep(
            [r.load for r in rows],
            [r.t_bg for r in rows],
            [r.t_lower for r in rows],
            [r.t_upper for r in rows],
            [r.throughput_tps for r in rows],
            d / SWEEP_PNG,
            ceiling=data["parameters"]["ceiling"],
            level=data["parameters"]["level"],
        )
    except plots.PlotsUnavailable as exc:
        print(str(exc), file=sys.stderr)
        return []
    return [SWEEP_PNG]


def params(args: argparse.Namespace, prompts: PromptSet) -> dict[str, Any]:
    return {
        "command": "sweep",
        "base_url": args.base_url,
        "model": args.model,
        "max_tokens": args.max_tokens,
        "top_logprobs": args.top_logprobs,
        "prompt_set": prompts.name,
        "prompt_digest": prompts.digest,
        **compare.params(args),
    }


async def _run(args: argparse.Namespace) -> int:
    prompts = load_prompts(args.prompts).head(args.prompt_limit)
    if not 0 <= args.top_logprobs <= 20:
        raise UsageError("--top-logprobs must be in 0..20")
    key = api_key(args.api_key_env)
    d = out_dir(args.out)
    store = Store(d, params(args, prompts))
    ids = [p.id for p in prompts.prompts]
    by_id = {p.id: p for p in prompts.prompts}
    caps = Capabilities(args.top_logprobs or None)
    session = session_id()
    bud = budget(args)
    stop = asyncio.Event()
    outcomes: dict[int, Outcome] = {}
    cand_outcomes: dict[str, Outcome] = {}
    cand_caps = Capabilities(args.top_logprobs or None)
    plan = {
        c: [Key("sut", pid, r, 0.0, c) for pid, r in spread(ids, args.runs)] for c in args.levels
    }
    if len(ids) < 2 * max(args.levels):
        caps.notes.append(
            f"{len(ids)} prompts for loads up to {max(args.levels)}: with fewer than twice as many "
            "prompts as requests in flight, the runs of one prompt may meet the same batch "
            "neighbours and under-show the batch noise"
        )
    try:
        with sigint_sets(stop):
            for c in args.levels:
                if stop.is_set() or bud.exhausted():
                    break
                ep = Endpoint(
                    make_client(args.base_url, key, args.timeout),
                    args.model,
                    args.max_tokens,
                    caps,
                    session,
                )

                async def send(k: Key, ep: Endpoint = ep) -> Record:
                    return await one_run(ep, by_id[k.prompt], k)

                todo = pending(store, plan[c])
                try:
                    outcomes[c] = await execute(
                        todo,
                        send,
                        store,
                        concurrency=c,
                        budget=bud,
                        stop=stop,
                        progress=Progress(len(todo), f"load {c}"),
                    )
                finally:
                    await ep.client.close()
                down = outcomes[c].done == 0 and outcomes[c].failed > 0
                if args.compare and not down and not stop.is_set():
                    cand_outcomes[str(c)] = await compare.run_candidate(
                        args,
                        compare.candidate_keys(plan[c]),
                        by_id,
                        store,
                        concurrency=c,
                        caps=cand_caps,
                        session=session,
                        budget=bud,
                        stop=stop,
                        label=f"candidate load {c}",
                    )
                if outcomes[c].done == 0 and outcomes[c].failed:
                    break  # the endpoint is down or refuses: the next level would fail alike
    finally:
        store.close()
    rows, rec, data = summarise(store, args, plan, outcomes, caps.notes)
    ab = None
    if args.compare:
        ab = compare.for_sweep(store, args, plan, cand_outcomes, cand_caps, data)
    data["plots"] = write_outputs(d, rows, rec, data)
    print(table(rows, args.level))
    print(recommendation_line(rec))
    if rec.load is None and any(r.t_upper is not None for r in rows):
        wanted = {k for keys in plan.values() for k in keys}
        recs = [r for r in store.select("sut") if r.key in wanted]
        needs = sweep_needs(recs, args.levels, args.runs, args.ceiling, args.level)
        print(runs_to_decide(needs, args.ceiling, args.runs))
    if ab is not None:
        print(ab)
    print(
        f"written: {d / SWEEP_CSV}, {d / SWEEP_JSON}"
        + (f", {d / SWEEP_PNG}" if data["plots"] else "")
    )
    if stop.is_set():
        print(
            f"tbg sweep: interrupted; wrote what was measured to {d}; rerun the same command to continue",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    stopped = [o.stopped for o in outcomes.values() if o.stopped]
    stopped += [o.stopped for o in cand_outcomes.values() if o.stopped]
    if not rows:
        why = nothing_measured({str(k): o for k, o in outcomes.items()}, args.base_url)
        print(f"tbg sweep: nothing measured: {why}", file=sys.stderr)
        return 1
    if stopped or len(outcomes) < len(args.levels):
        print(
            f"tbg sweep: stopped early ({stopped[0] if stopped else 'bound reached'}); partial results written",
            file=sys.stderr,
        )
    return 0


def summarise(
    store: Store,
    args: argparse.Namespace,
    plan: dict[int, list[Key]],
    outcomes: dict[int, Outcome],
    notes: list[str],
) -> tuple[list[LevelRow], Recommendation, dict[str, Any]]:
    wanted = {k for keys in plan.values() for k in keys}
    recs = [r for r in store.select("sut") if r.key in wanted]
    by_level: dict[int, list[Record]] = defaultdict(list)
    for r in recs:
        by_level[r.key.level].append(r)
    low = min(args.levels)
    base = [r for r in by_level.get(low, []) if r.key.run == 0]
    rows = [
        level_row(c, by_level[c], base if c != low else [], len(plan[c]), args.level)
        for c in args.levels
        if by_level.get(c)
    ]
    rec = recommend(rows, args.ceiling)
    data: dict[str, Any] = {
        "tool": "tbg sweep",
        "environment": report.environment(),
        "endpoint": {"base_url": args.base_url, "model": args.model},
        "method": "likelihood (runs of one level compared with each other)",
        "parameters": {
            **store.params,
            "levels": list(args.levels),
            "runs": args.runs,
            "ceiling": args.ceiling,
            "level": args.level,
            "baseline_level": low,
        },
        "levels": [asdict(r) for r in rows],
        "recommendation": asdict(rec),
        "complete": len(outcomes) == len(args.levels)
        and all(o.stopped is None for o in outcomes.values()),
        "this_session": {str(k): asdict(v) for k, v in outcomes.items()},
        "notes": list(notes),
    }
    return rows, rec, data


def main(argv: list[str]) -> int:
    import openai

    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except (UsageError, PromptError, StoreError) as exc:
        print(f"tbg sweep: {exc}", file=sys.stderr)
        return 2
    except openai.APIError as exc:
        print(f"tbg sweep: the endpoint answered with an error: {exc}", file=sys.stderr)
        return 1
