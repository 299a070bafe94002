"""Offline A/B of two endpoints: `tbg measure --compare URL` and `tbg sweep --compare URL`.

The baseline (``--base-url``) and the candidate (``--compare``) answer the same prompts, the same
number of runs, with the same options, at each load: first the baseline, then the candidate (one
endpoint at a time, so their throughputs do not share the client or a machine). The candidate's
runs are stored beside the baseline's under role ``cand`` (measure.store), so an interrupted
comparison resumes, and an existing baseline measurement in ``--out`` is reused as it is.

Per load: each endpoint's T_bg (likelihood, steady load), divergence, throughput and latency
(measure.sweep.level_row, as the sweep reports them), the cross-divergence of the candidate's
answers from the baseline's with the prompt as the unit (measure.cross), the Boltzmann model's
prediction of it from the two T_bg, and the verdict (measure.verdict).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from measure import analysis, report
from measure.client import Capabilities, Endpoint, make_client, one_run
from measure.common import api_key
from measure.compare_plot import plot_compare
from measure.cross import BoltzmannCheck, CrossDivergence, boltzmann_check, cross_divergence
from measure.execute import Budget, Outcome, execute
from measure.plots import PlotsUnavailable
from measure.progress import Progress
from measure.prompts import Prompt
from measure.store import Key, Record, Store, pending
from measure.verdict import Verdict, joint_interval, verdict

if TYPE_CHECKING:
    from measure.sweep import LevelRow

ROLE = "cand"
LABEL = "candidate runs"
COMPARE_PNG = "compare.png"


def add_compare_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("A/B comparison (docs/measure.md, 'Compare two endpoints')")
    g.add_argument(
        "--compare",
        metavar="URL",
        help="candidate endpoint: the same prompts at each load against it too, and the verdict",
    )
    g.add_argument(
        "--compare-model", metavar="NAME", help="model at the candidate (default --model)"
    )
    g.add_argument(
        "--compare-api-key-env",
        metavar="NAME",
        help="variable holding the candidate's API key (default: --api-key-env's)",
    )


def params(args: argparse.Namespace) -> dict[str, Any]:
    """What the candidate's runs mean, for params.json (nothing without --compare)."""
    if not args.compare:
        return {}
    return {"compare_url": args.compare, "compare_model": args.compare_model or args.model}


def candidate_keys(keys: Sequence[Key]) -> list[Key]:
    return [replace(k, role=ROLE) for k in keys]


def candidate_endpoint(args: argparse.Namespace, caps: Capabilities, session: str) -> Endpoint:
    key = api_key(args.compare_api_key_env or args.api_key_env)
    return Endpoint(
        make_client(args.compare, key, args.timeout),
        args.compare_model or args.model,
        args.max_tokens,
        caps,
        session,
    )


async def run_candidate(
    args: argparse.Namespace,
    keys: Sequence[Key],
    prompts: Mapping[str, Prompt],
    store: Store,
    *,
    concurrency: int,
    caps: Capabilities,
    session: str,
    budget: Budget,
    stop: asyncio.Event,
    label: str = LABEL,
) -> Outcome:
    """The candidate's runs of `keys` (role ``cand``) not yet in the store."""
    ep = candidate_endpoint(args, caps, session)
    todo = pending(store, keys)
    if len(todo) < len(keys):
        print(
            f"{label}: {len(keys) - len(todo)} of {len(keys)} runs already in {store.dir}",
            file=sys.stderr,
        )

    async def send(k: Key) -> Record:
        return await one_run(ep, prompts[k.prompt], k)

    try:
        return await execute(
            todo,
            send,
            store,
            concurrency=concurrency,
            budget=budget,
            stop=stop,
            progress=Progress(len(todo), label),
        )
    finally:
        await ep.client.close()


@dataclass(frozen=True)
class LoadComparison:
    load: int
    baseline: LevelRow
    candidate: LevelRow
    cross: CrossDivergence
    boltzmann: BoltzmannCheck | None
    verdict: Verdict


def compare_load(
    load: int,
    base: Sequence[Record],
    cand: Sequence[Record],
    *,
    base_lowest: Sequence[Record],
    cand_lowest: Sequence[Record],
    planned: int,
    level: float,
) -> LoadComparison:
    """Both endpoints at one load (``*_lowest``: each one's first runs at the lowest load, for
    the sweep's vs-lowest columns; empty in `tbg measure`)."""
    from measure.sweep import level_row  # measure.sweep imports this module

    b_row = level_row(load, base, base_lowest, planned, level)
    c_row = level_row(load, cand, cand_lowest, planned, level)
    cross = cross_divergence(base, cand, level=level)
    check = None
    if b_row.t_bg is not None and c_row.t_bg is not None:
        check = boltzmann_check(base, cand, b_row.t_bg, c_row.t_bg, level=level)
    b_joint = joint_interval(analysis.trials_from(base), level) if b_row.t_bg is not None else None
    c_joint = joint_interval(analysis.trials_from(cand), level) if c_row.t_bg is not None else None
    v = verdict(b_joint, c_joint, b_row.throughput_tps, c_row.throughput_tps, level)
    return LoadComparison(load, b_row, c_row, cross, check, v)


def block(
    args: argparse.Namespace,
    loads: Sequence[LoadComparison],
    outcomes: Mapping[str, Outcome],
    caps: Capabilities,
    plot: list[str],
) -> dict[str, Any]:
    """The report's ``compare`` block."""
    return {
        "baseline": {"base_url": args.base_url, "model": args.model},
        "candidate": {"base_url": args.compare, "model": args.compare_model or args.model},
        "method": "the same prompts, runs and options at each load against both endpoints, "
        "baseline first; T_bg of each from its own runs (likelihood); cross-divergence over "
        "(baseline run, candidate run) pairs of a prompt, the prompt as the unit; verdict from "
        "the two T_bg intervals (Bonferroni)",
        "level": args.level,
        "loads": [asdict(x) for x in loads],
        "complete": all(o.stopped is None for o in outcomes.values()),
        "this_session": {k: asdict(v) for k, v in outcomes.items()},
        "notes": list(caps.notes),
        "plots": plot,
    }


def write_plot(d: Path, loads: Sequence[LoadComparison], level: float) -> list[str]:
    if not loads:
        return []
    try:
        plot_compare(
            [x.load for x in loads],
            [x.baseline for x in loads],
            [x.candidate for x in loads],
            d / COMPARE_PNG,
            level=level,
        )
    except PlotsUnavailable as exc:
        print(str(exc), file=sys.stderr)
        return []
    return [COMPARE_PNG]


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.3g} %"


def cross_line(c: CrossDivergence) -> str:
    if not c.pairs:
        return "cross: no prompt answered by both"
    f = report.fmt
    where = "no answer pair differs"
    if c.diverged_pairs:
        where = (
            f"first difference at token {f(c.first_divergence_median)} (median; earliest "
            f"{c.first_divergence_min})"
        )
    return (
        f"cross: {c.diverged_pairs} of {c.pairs} answer pairs differ, {_pct(c.rate)} "
        f"[{_pct(c.rate_lower)}, {_pct(c.rate_upper)}] ({100 * c.level:g} %, prompt as unit), "
        f"at {c.prompts_differing} of {c.prompts} prompts; {where}; per token "
        f"{f(c.hazard)} [{f(c.hazard_lower)}, {f(c.hazard_upper)}]"
    )


def boltzmann_line(b: BoltzmannCheck | None) -> str:
    if b is None:
        return "Boltzmann check: n/a (needs top-k logprobs and T_bg on both sides)"
    f = report.fmt
    why = {
        "consistent": "the difference is what the two endpoints' randomness explains",
        "more than predicted": "the candidate answers differently beyond both endpoints' "
        "randomness (another model, kernel or checkpoint)",
        "fewer than predicted": "the answers part less often than two independent samplers would",
    }[b.reading]
    if b.observed == 0 and b.expected == 0:
        why = "no difference expected, none seen"
    return (
        f"Boltzmann model at T_bg {f(b.t_baseline)} and {f(b.t_candidate)}: {f(b.expected)} first "
        f"differences expected, {b.observed} observed (z {f(b.z)}): {b.reading}; {why}"
    )


def table(loads: Sequence[LoadComparison], level: float) -> str:
    f = report.fmt
    head = (
        f"{'load':>5} {'endpoint':<10} {'runs':>9} {'T_bg':>8} {f'{100 * level:g}% interval':>20} "
        f"{'diverged':>9} {'tok/s':>8} {'p50 s':>7} {'p95 s':>7}"
    )
    out = [head]
    pad = " " * 6
    for x in loads:
        for name, r in (("baseline", x.baseline), ("candidate", x.candidate)):
            iv = "n/a" if r.t_upper is None else f"[{f(r.t_lower)}, {f(r.t_upper)}]"
            dv = "n/a" if r.divergence_rate is None else f"{r.diverged_pairs}/{r.pairs}"
            load = f"{x.load:>5}" if name == "baseline" else " " * 5
            out.append(
                f"{load} {name:<10} {f'{r.runs}/{r.planned}':>9} {f(r.t_bg):>8} {iv:>20} "
                f"{dv:>9} {f(r.throughput_tps):>8} {f(r.latency_p50_s):>7} {f(r.latency_p95_s):>7}"
            )
        out.append(pad + cross_line(x.cross))
        out.append(pad + boltzmann_line(x.boltzmann))
        out.append(pad + "verdict: " + x.verdict.text)
    return "\n".join(out)


def header(args: argparse.Namespace) -> str:
    return (
        f"A/B: baseline {args.base_url} ({args.model}) vs candidate {args.compare} "
        f"({args.compare_model or args.model}), the same prompts at each load"
    )


def _records(store: Store, keys: Sequence[Key]) -> list[Record]:
    return [store.records[k] for k in keys if k in store.records]


def for_measure(
    store: Store,
    args: argparse.Namespace,
    keys: Sequence[Key],
    outcomes: Mapping[str, Outcome],
    caps: Capabilities,
    data: dict[str, Any],
) -> str:
    """`tbg measure --compare`: the ``compare`` block into ``data`` (and compare.png); returns
    the table to print."""
    base = _records(store, keys)
    cand = _records(store, candidate_keys(keys))
    loads = []
    if base and cand:
        loads.append(
            compare_load(
                args.concurrency,
                base,
                cand,
                base_lowest=[],
                cand_lowest=[],
                planned=len(keys),
                level=args.level,
            )
        )
    plot = write_plot(store.dir, loads, args.level)
    data["compare"] = block(args, loads, outcomes, caps, plot)
    data["plots"] = [*data.get("plots", []), *plot]
    return "\n".join([header(args), table(loads, args.level)])


def for_sweep(
    store: Store,
    args: argparse.Namespace,
    plan: Mapping[int, Sequence[Key]],
    outcomes: Mapping[str, Outcome],
    caps: Capabilities,
    data: dict[str, Any],
) -> str:
    """`tbg sweep --compare`: as `for_measure`, one comparison per load level measured on both
    sides; the vs-lowest figures of each endpoint against its own lowest load."""
    low = min(plan)
    base_low = [r for r in _records(store, plan[low]) if r.key.run == 0]
    cand_low = [r for r in _records(store, candidate_keys(plan[low])) if r.key.run == 0]
    loads = []
    for c in sorted(plan):
        base = _records(store, plan[c])
        cand = _records(store, candidate_keys(plan[c]))
        if not (base and cand):
            continue
        loads.append(
            compare_load(
                c,
                base,
                cand,
                base_lowest=base_low if c != low else [],
                cand_lowest=cand_low if c != low else [],
                planned=len(plan[c]),
                level=args.level,
            )
        )
    plot = write_plot(store.dir, loads, args.level)
    data["compare"] = block(args, loads, outcomes, caps, plot)
    data["complete"] = bool(data.get("complete")) and data["compare"]["complete"]
    data["complete"] = data["complete"] and len(outcomes) == len(plan)
    return "\n".join([header(args), table(loads, args.level)])


def markdown(data: Mapping[str, Any]) -> str:
    """The ``compare`` block for report.md."""
    cmp = data["compare"]
    lines = [
        "",
        "## A/B comparison",
        "",
        f"Baseline `{cmp['baseline']['base_url']}` (`{cmp['baseline']['model']}`) vs candidate "
        f"`{cmp['candidate']['base_url']}` (`{cmp['candidate']['model']}`); {cmp['method']}.",
        "",
    ]
    for x in cmp["loads"]:
        f = report.fmt
        lines.append(f"### Load {x['load']}")
        lines.append("")
        for name in ("baseline", "candidate"):
            r = x[name]
            lines.append(
                f"- **{name}**: T_bg {f(r['t_bg'])} [{f(r['t_lower'])}, {f(r['t_upper'])}], "
                f"{r['diverged_pairs']}/{r['pairs']} run pairs diverged, "
                f"{f(r['throughput_tps'])} tok/s, latency p50 {f(r['latency_p50_s'])} s, "
                f"p95 {f(r['latency_p95_s'])} s"
            )
        c = CrossDivergence(**x["cross"])
        b = BoltzmannCheck(**x["boltzmann"]) if x["boltzmann"] else None
        lines += [f"- {cross_line(c)}", f"- {boltzmann_line(b)}"]
        lines += [f"- **verdict**: {x['verdict']['text']}", ""]
    lines += [f"![{p}]({p})" for p in cmp["plots"]]
    return "\n".join(lines) + "\n"
