"""`tbg measure`: run the system under test at temperature 0 and report its background temperature.

Every prompt is sent ``--runs`` times (run-major order, so runs of one prompt are spread over time
and batches) under ``--concurrency`` requests in flight. Reported: the model-free statistics, the
`likelihood` and `jitter` estimates when the endpoint returns top-k logprobs, and with
``--method paper`` the paper's KS-matching estimate against a reference endpoint sampled at the
paper's temperature grid (plus the `hazard` estimate relative to that reference). Results land in
``--out DIR``: runs.jsonl (resumable), report.json, report.md and PNG plots.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from measure import analysis, compare, decisions, plots, report
from measure.advice import which_to_believe
from measure.client import Capabilities, Endpoint, make_client, one_run
from measure.common import (
    EXIT_INTERRUPTED,
    UsageError,
    add_endpoint_args,
    api_key,
    budget,
    nothing_measured,
    out_dir,
    positive_int,
    session_id,
    sigint_sets,
)
from measure.execute import Budget, Outcome, execute, spread
from measure.progress import Progress
from measure.prompts import PromptError, PromptSet, load_prompts
from measure.store import Key, Record, Store, StoreError, pending

SURVIVAL_PNG = "survival.png"
# What each phase is called where a person reads it (the store's roles are "sut" and "ref").
LABELS = {"sut": "endpoint runs", "reference": "reference runs"}
PROFILE_PNG = "likelihood_profile.png"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tbg measure",
        description="Measure the background temperature T_bg of an OpenAI-compatible endpoint "
        "(offline, at one load). See docs/measure.md.",
    )
    add_endpoint_args(p, default_max_tokens=32)
    p.add_argument("--runs", type=positive_int, default=8, help="runs per prompt (default 8)")
    p.add_argument("--concurrency", type=positive_int, default=1, help="requests in flight")
    g = p.add_argument_group("paper method (Messina & Scotta)")
    g.add_argument("--method", choices=("ours", "paper"), default="ours")
    g.add_argument(
        "--reference-url", help="reference endpoint (e.g. `tbg reference --mode serial`)"
    )
    g.add_argument("--reference-model", help="model at the reference endpoint (default --model)")
    g.add_argument("--reference-runs", type=positive_int, default=32, help="draws per prompt per T")
    g.add_argument("--grid", help="comma-separated temperatures (default: the paper's 32)")
    compare.add_compare_args(p)
    return p


@dataclass(frozen=True)
class Plan:
    sut: tuple[Key, ...]
    ref: tuple[Key, ...]
    grid: tuple[float, ...]


def parse_grid(text: str | None) -> tuple[float, ...]:
    from estimator.paper import PAPER_GRID

    if text is None:
        return PAPER_GRID
    try:
        grid = tuple(sorted({float(x) for x in text.split(",") if x.strip()}))
    except ValueError:
        raise UsageError(f"--grid: not a comma-separated list of numbers: {text!r}") from None
    if len(grid) < 2 or grid[0] < 0:
        raise UsageError("--grid needs at least two temperatures >= 0")
    return grid


def plan(args: argparse.Namespace, prompts: PromptSet) -> Plan:
    ids = [p.id for p in prompts.prompts]
    sut = tuple(Key("sut", pid, r, 0.0, args.concurrency) for pid, r in spread(ids, args.runs))
    if args.method != "paper":
        return Plan(sut, (), ())
    grid = parse_grid(args.grid)
    ref = tuple(
        Key("ref", pid, r, t, args.concurrency)
        for t in grid
        for pid, r in spread(ids, args.reference_runs)
    )
    return Plan(sut, ref, grid)


def params(args: argparse.Namespace, prompts: PromptSet) -> dict[str, Any]:
    out: dict[str, Any] = {
        "command": "measure",
        "base_url": args.base_url,
        "model": args.model,
        "max_tokens": args.max_tokens,
        "top_logprobs": args.top_logprobs,
        "concurrency": args.concurrency,
        "prompt_set": prompts.name,
        "prompt_digest": prompts.digest,
    }
    if args.method == "paper":
        out["reference_url"] = args.reference_url
        out["reference_model"] = args.reference_model or args.model
    out.update(compare.params(args))
    return out


async def _phase(
    label: str,
    keys: Sequence[Key],
    ep: Endpoint,
    prompts: PromptSet,
    store: Store,
    concurrency: int,
    bud: Budget,
    stop: asyncio.Event,
) -> Outcome:
    by_id = {p.id: p for p in prompts.prompts}
    todo = pending(store, keys)
    if len(todo) < len(keys):
        print(
            f"{label}: {len(keys) - len(todo)} of {len(keys)} runs already in {store.dir}",
            file=sys.stderr,
        )
    prog = Progress(len(todo), label)

    async def send(k: Key) -> Record:
        return await one_run(ep, by_id[k.prompt], k)

    try:
        return await execute(
            todo, send, store, concurrency=concurrency, budget=bud, stop=stop, progress=prog
        )
    finally:
        await ep.client.close()


def _word_trials(records: Sequence[Record]) -> list[Any]:
    """Trials over whitespace words (the paper's statistics and the hazard curve compare the
    SUT with the reference on one tokenisation, whatever each endpoint reports)."""
    from estimator.builders import text_tokens

    words = [
        replace(r, tokens=text_tokens(r.text), logprobs=None, top_logprobs=None) for r in records
    ]
    return analysis.trials_from(words)


def paper_estimates(
    sut: Sequence[Record], ref: Sequence[Record], max_tokens: int
) -> tuple[dict[str, Any], list[str]]:
    from estimator.hazard import estimate_hazard, reference_curve_from_trials
    from estimator.paper import estimate_paper

    out: dict[str, Any] = {}
    notes: list[str] = []
    by_t: dict[float, list[Record]] = {}
    for r in ref:
        by_t.setdefault(r.key.temperature, []).append(r)
    ref_trials = {t: _word_trials(rs) for t, rs in sorted(by_t.items())}
    sut_trials = _word_trials(sut)
    if len(ref_trials) < 2 or not sut_trials:
        notes.append("paper: needs endpoint runs and reference runs at >= 2 temperatures")
        return out, notes
    res = estimate_paper(sut_trials, ref_trials)
    out["paper"] = analysis.result_dict(res)
    try:
        curve = reference_curve_from_trials("reference endpoint", ref_trials)
        out["hazard"] = analysis.result_dict(estimate_hazard(sut_trials, curve))
    except ValueError as exc:
        notes.append(f"hazard: no usable reference curve ({exc})")
    return out, notes


def _sut_trials(store: Store, args: argparse.Namespace) -> list[Any]:
    """The endpoint's trials that `analyse` reads (its runs and concurrency level)."""
    sut = store.select("sut")
    return analysis.trials_from(
        [r for r in sut if r.key.run < args.runs and r.key.level == args.concurrency]
    )


def analyse(
    store: Store, args: argparse.Namespace, outcomes: dict[str, Outcome], notes: list[str]
) -> dict[str, Any]:
    sut = store.select("sut")
    sut = [r for r in sut if r.key.run < args.runs and r.key.level == args.concurrency]
    trials = analysis.trials_from(sut)
    with_lp = analysis.has_logprobs(sut)
    data: dict[str, Any] = {
        "tool": "tbg measure",
        "environment": report.environment(),
        "endpoint": {"base_url": args.base_url, "model": args.model},
        "method": args.method,
        "parameters": {
            **store.params,
            "runs": args.runs,
            "level": args.level,
            "reference_runs": args.reference_runs if args.method == "paper" else None,
        },
        "logprobs": with_lp,
        "counts": {
            "endpoint_runs": len(sut),
            "reference_runs": len(store.select("ref")),
            "this_session": {k: asdict(v) for k, v in outcomes.items()},
        },
        "complete": all(o.stopped is None for o in outcomes.values()),
    }
    est: dict[str, Any] = {}
    survival_curve = None
    profile = None
    if trials:
        data["model_free"] = analysis.model_free(
            trials, level=args.level, max_tokens=args.max_tokens
        )
        survival_curve = analysis.survival(trials, level=args.level)
        data["survival"] = asdict(survival_curve)
        e, profile, n = analysis.estimates(trials, level=args.level, with_logprobs=with_lp)
        est.update(e)
        notes += n
    if args.method == "paper":
        e, n = paper_estimates(sut, store.select("ref"), args.max_tokens)
        est.update(e)
        notes += n
    data["estimates"] = est
    data["notes"] = notes
    data["plots"] = write_plots(store.dir, survival_curve, profile, notes)
    return data


def write_plots(
    d: Path,
    s: analysis.Survival | None,
    prof: analysis.ProfileCurve | None,
    notes: list[str],
) -> list[str]:
    written: list[str] = []
    try:
        if s is not None and s.pairs:
            plots.plot_survival(s, d / SURVIVAL_PNG)
            written.append(SURVIVAL_PNG)
        if prof is not None:
            plots.plot_profile(prof, d / PROFILE_PNG)
            written.append(PROFILE_PNG)
    except plots.PlotsUnavailable as exc:
        notes.append(str(exc))
        print(str(exc), file=sys.stderr)
    return written


def markdown(data: dict[str, Any]) -> str:
    p = data["parameters"]
    lines = [
        "# tbg measure report",
        "",
        f"Endpoint `{data['endpoint']['base_url']}`, model `{data['endpoint']['model']}`; "
        f"{p['runs']} runs per prompt at temperature 0, max {p['max_tokens']} tokens, "
        f"concurrency {p['concurrency']}, prompt set `{p['prompt_set']}`; method `{data['method']}`; "
        f"{data['environment']['time_utc']}.",
        "",
    ]
    if not data["complete"]:
        lines += ["**Partial**: the run stopped early; rerun the same command to continue.", ""]
    lines += ["## Background temperature", ""]
    lines += report.estimates_md(data["estimates"]) or ["- no temperature estimate (see notes)"]
    believe = which_to_believe(data["estimates"])
    if believe:
        lines += ["", believe]
    lines += [
        "",
        "T_bg is the temperature at which an ideal, perfectly reproducible copy of the model "
        "would vary as much as this endpoint does at temperature 0; 0 means reproducible.",
        "",
    ]
    if "model_free" in data:
        lines += ["## Model-free statistics", ""]
        lines += report.model_free_md(data["model_free"], p["max_tokens"])
        lines.append("")
    lines += decisions.markdown(data)
    if data["plots"]:
        lines += ["## Plots", ""] + [f"![{x}]({x})" for x in data["plots"]] + [""]
    if data["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in data["notes"]] + [""]
    return "\n".join(lines)


async def _run(args: argparse.Namespace) -> int:
    prompts = load_prompts(args.prompts).head(args.prompt_limit)
    if args.method == "paper" and not args.reference_url:
        raise UsageError("--method paper needs --reference-url")
    if args.top_logprobs < 0 or args.top_logprobs > 20:
        raise UsageError("--top-logprobs must be in 0..20")
    key = api_key(args.api_key_env)
    d = out_dir(args.out)
    pl = plan(args, prompts)
    store = Store(d, params(args, prompts))
    notes: list[str] = []
    if store.skipped_lines:
        notes.append(f"{store.skipped_lines} unreadable line(s) in runs.jsonl dropped (redone)")
    session = session_id()
    caps = Capabilities(args.top_logprobs or None)
    cand_caps = Capabilities(args.top_logprobs or None)
    bud = budget(args)
    stop = asyncio.Event()
    outcomes: dict[str, Outcome] = {}
    try:
        with sigint_sets(stop):
            ep = Endpoint(
                make_client(args.base_url, key, args.timeout),
                args.model,
                args.max_tokens,
                caps,
                session,
            )
            outcomes["sut"] = await _phase(
                "endpoint runs", pl.sut, ep, prompts, store, args.concurrency, bud, stop
            )
            if pl.ref and not stop.is_set():
                ref_ep = Endpoint(
                    make_client(args.reference_url, key, args.timeout),
                    args.reference_model or args.model,
                    args.max_tokens,
                    Capabilities(None),  # the paper's statistics need text only
                    session,
                )
                outcomes["reference"] = await _phase(
                    "reference runs", pl.ref, ref_ep, prompts, store, args.concurrency, bud, stop
                )
            if args.compare and not stop.is_set():
                outcomes["candidate"] = await compare.run_candidate(
                    args,
                    compare.candidate_keys(pl.sut),
                    {p.id: p for p in prompts.prompts},
                    store,
                    concurrency=args.concurrency,
                    caps=cand_caps,
                    session=session,
                    budget=bud,
                    stop=stop,
                )
    finally:
        store.close()
    notes = caps.notes + notes
    for name, o in outcomes.items():
        who = LABELS.get(name, name)
        if o.failed:
            notes.append(
                f"{who}: {o.failed} request(s) failed (not recorded; a rerun retries), e.g. {o.errors[0]}"
            )
        if o.stopped:
            notes.append(f"{who}: stopped early: {o.stopped}")
    data = analyse(store, args, outcomes, notes)
    ab = None
    if args.compare:
        ab = compare.for_measure(store, args, pl.sut, outcomes, cand_caps, data)
    data["decisions"] = decisions.section(_sut_trials(store, args), prompts)  # tools/json prompts
    report.write_json(d / report.REPORT_JSON, data)
    (d / report.REPORT_MD).write_text(markdown(data), "utf-8")
    if args.compare:
        with (d / report.REPORT_MD).open("a", encoding="utf-8") as fh:
            fh.write(compare.markdown(data))
    _summary(data, d)
    if ab is not None:
        print(ab)
    if stop.is_set():
        print(
            f"tbg measure: interrupted; wrote what was measured to {d} "
            f"({data['counts']['endpoint_runs']} runs); rerun the same command to continue",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    stopped = [o.stopped for o in outcomes.values() if o.stopped]
    if not data["counts"]["endpoint_runs"]:
        why = nothing_measured({"sut": outcomes["sut"]}, args.base_url)
        print(f"tbg measure: nothing measured: {why}", file=sys.stderr)
        return 1
    if stopped:
        print(
            f"tbg measure: stopped early ({stopped[0]}); partial results written; rerun the "
            "same command to continue",
            file=sys.stderr,
        )
    return 0


def _summary(data: dict[str, Any], d: Path) -> None:
    est = data["estimates"]
    for line in report.estimates_md(est):
        print(line.replace("**", ""))
    believe = which_to_believe(est)
    if believe:
        print(textwrap.fill(believe, 100))
    mf = data.get("model_free")
    if mf:
        print(
            f"- exact-match rate {report.fmt(mf['exact_match_rate'])}, "
            f"{mf['diverged_pairs']}/{mf['pairs']} run pairs diverged"
        )
    print(
        f"report: {d / report.REPORT_MD} (and report.json, {', '.join(data['plots']) or 'no plots'})"
    )


def main(argv: list[str]) -> int:
    import openai

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except (UsageError, PromptError, StoreError) as exc:
        print(f"tbg measure: {exc}", file=sys.stderr)
        return 2
    except openai.APIError as exc:  # auth, unknown model, ...: what is done stays in --out
        print(f"tbg measure: the endpoint answered with an error: {exc}", file=sys.stderr)
        return 1
