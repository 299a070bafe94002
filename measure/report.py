"""The run's environment and the report files: ``report.json`` (machine-readable) and
``report.md`` (for people). NaN/inf become JSON null."""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from measure.analysis import finite

REPORT_JSON = "report.json"
REPORT_MD = "report.md"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    return {
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": {
            d: _version(d) for d in ("tbg-proxy", "numpy", "scipy", "openai", "matplotlib")
        },
        "argv": sys.argv,
    }


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(finite(data), indent=2, ensure_ascii=False) + "\n", "utf-8")
    tmp.replace(path)


def fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def interval(e: Mapping[str, Any]) -> str:
    lvl = f"{100 * e['level']:g} %" if e.get("level") == e.get("level") else ""
    if e.get("estimate") == 0.0 and e.get("lower") == 0.0 and e.get("method") == "likelihood":
        return f"0 (no divergence scored); {lvl} upper bound {fmt(e['upper'])}"
    return f"{fmt(e['estimate'])} [{fmt(e['lower'])}, {fmt(e['upper'])}] ({lvl})"


def estimates_md(est: Mapping[str, Any]) -> list[str]:
    lines = []
    if "likelihood" in est:
        lines.append(
            f"- **T_bg (likelihood)**: {interval(est['likelihood'])}; "
            "the Boltzmann model on the reported top-k logprobs, profile-likelihood interval "
            "with the prompt (one trial: its runs) as the unit of independence (design effect "
            f"{fmt(est['likelihood'].get('diagnostics', {}).get('design_effect'))}); it does not "
            "cover a change of prompt mix."
        )
    if "bootstrap_prompts" in est:
        b = est["bootstrap_prompts"]
        lines.append(
            f"- **T_bg (likelihood, bootstrap over prompts)**: [{fmt(b['lower'])}, "
            f"{fmt(b['upper'])}] ({100 * b['level']:g} %, {fmt(b['resamples'])} resamples); SD of "
            f"log T_hat {fmt(b['sd_log'])} vs the interval's implied {fmt(b['interval_sd_log'])} "
            f"(ratio {fmt(b['sd_ratio'])}; near 1 when the interval's width is the prompts' spread)."
        )
    if "jitter" in est:
        j = est["jitter"]
        d = j["diagnostics"]
        lines.append(
            f"- **jitter temperature (a cross-check, not T_bg)**: {interval(j)}; from the "
            "run-to-run noise of the logprob gaps "
            f"(σ_Δ = {fmt(d.get('sigma_gap'))}, share of bit-identical positions "
            f"{fmt(d.get('p_identical'))}; "
            f"predicted divergences {fmt(d.get('predicted_divergences'))} vs observed "
            f"{fmt(d.get('observed_divergences'))})."
        )
    if "paper" in est:
        p = est["paper"]
        lines.append(
            f"- **T_bg (paper, KS matching)**: {fmt(p['estimate'])} (no interval: the protocol has "
            "none; per-statistic T_n in report.json)."
        )
    if "hazard" in est:
        lines.append(
            f"- **T_bg (hazard, relative to the reference endpoint)**: {interval(est['hazard'])}."
        )
    return lines


def model_free_md(mf: Mapping[str, Any], max_tokens: int) -> list[str]:
    hz = mf["hazard"]
    t = mf["tarr_at_n"]
    u = mf["unique_completions"]
    return [
        f"- prompts {mf['prompts']}, runs {mf['runs']} (at least {mf['runs_per_prompt_min']} per "
        f"prompt), run pairs {mf['pairs']}, of which diverged {mf['diverged_pairs']}",
        f"- **exact-match rate** (two runs of a prompt give the same answer): "
        f"{fmt(mf['exact_match_rate'])}",
        f"- **TARr@{t['n']}** (share of prompts whose {t['n']} answers are all identical): "
        f"{fmt(t['value'])}",
        f"- **unique completions** per prompt: mean {fmt(u['mean_per_prompt'])}, max "
        f"{u['max_per_prompt']}; prompts with more than one answer: "
        f"{u['prompts_with_more_than_one']}",
        f"- **divergence hazard** per token: {fmt(hz['per_token'])} [{fmt(hz['lower'])}, "
        f"{fmt(hz['upper'])}] ({100 * hz['level']:g} %, an exact Poisson interval on the trial-level effective "
        "count); chance that a "
        f"{max_tokens}-token answer differs between two runs: "
        f"{fmt(hz['p_diverge_at_max_tokens'])}",
    ]
