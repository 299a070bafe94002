"""`tbg measure --compare` and `tbg sweep --compare` through the real CLI, with reference upstreams
of known behaviour as baseline and candidate: `batched` (random under load) against `serial`
(reproducible), `thermostat` at two known temperatures, and an interrupted comparison resumed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from measure.cross import boltzmann_check
from measure.store import Record
from reference.launch import ReferenceProcess
from tests.measure.conftest import THERMOSTAT_T, THREADS, _need_reference
from tests.measure.helpers import assert_readable_png, load_json, runs_keys, tbg

pytestmark = [pytest.mark.reference, pytest.mark.slow]

COLD_T = 0.1  # the candidate thermostat's temperature (the baseline's is THERMOSTAT_T)


@pytest.fixture(scope="module")
def cold_thermostat_ref() -> Iterator[ReferenceProcess]:
    _need_reference()
    with ReferenceProcess(mode="thermostat", temperature=COLD_T, extra_args=THREADS) as ref:
        yield ref


@pytest.fixture(scope="module")
def serial_fp32_ref() -> Iterator[ReferenceProcess]:
    """Reproducible like `serial`, with other numerics (as another checkpoint or kernel)."""
    _need_reference()
    with ReferenceProcess(mode="serial", extra_args=(*THREADS, "--dtype", "float32")) as ref:
        yield ref


def _records(out: Path, role: str) -> list[Record]:
    lines = (out / "runs.jsonl").read_text("utf-8").splitlines()
    recs = [Record.from_json(json.loads(x)) for x in lines if x.strip()]
    return [r for r in recs if r.key.role == role]


def test_serial_candidate_of_batched_baseline(
    batched_ref: ReferenceProcess, serial_ref: ReferenceProcess, tmp_path: Path
) -> None:
    """At 8 requests in flight the batched reference varies, the serial one cannot: the
    candidate's T_bg is 0 with an interval from 0, the baseline's above 0, and the candidate's
    answers differ from the baseline's (12 prompts, more than the load, so the runs of one prompt
    meet different batch neighbours)."""
    out = tmp_path / "ab"
    cp = tbg(
        "measure", "--base-url", batched_ref.base_url, "--model", "smollm2",
        "--compare", serial_ref.base_url, "--prompt-limit", "12", "--runs", "3",
        "--max-tokens", "16", "--concurrency", "8", "--out", str(out),
    )  # fmt: skip
    assert cp.returncode == 0, cp.stderr
    data = load_json(out / "report.json")
    cmp = data["compare"]
    assert cmp["complete"] is True and data["complete"] is True
    assert cmp["candidate"] == {"base_url": serial_ref.base_url, "model": "smollm2"}
    (x,) = cmp["loads"]
    base, cand, cross = x["baseline"], x["candidate"], x["cross"]
    assert x["load"] == 8 and base["runs"] == cand["runs"] == 36
    assert cand["t_bg"] == 0.0 and cand["t_lower"] == 0.0 and 0 < cand["t_upper"] < 1
    assert cand["diverged_pairs"] == 0 and cand["sigma_gap"] == 0.0
    assert base["t_bg"] > 0, f"the batched reference did not vary under load: {base}"
    assert base["diverged_pairs"] > 0 and base["sigma_gap"] > 0
    assert cross["pairs"] == 12 * 3 * 3 and cross["diverged_pairs"] > 0
    assert 0 < cross["rate_lower"] <= cross["rate"] <= cross["rate_upper"] < 1
    assert 1 <= cross["prompts_differing"] <= 12
    assert x["boltzmann"]["t_candidate"] == 0.0 and x["boltzmann"]["expected"] > 0
    assert x["verdict"]["outcome"] in {"removes", "inconclusive"}
    assert 0 < x["verdict"]["throughput_ratio"] < 1  # serial serves one request at a time
    # The existing report is kept: its T_bg is the baseline's, the same figure.
    assert data["estimates"]["likelihood"]["estimate"] == pytest.approx(base["t_bg"])
    assert data["counts"]["endpoint_runs"] == 36
    assert "verdict: " + x["verdict"]["text"] in cp.stdout
    assert "## A/B comparison" in (out / "report.md").read_text("utf-8")
    assert_readable_png(out / "compare.png")
    print(
        f"\nbatched vs serial at load 8: T_bg {base['t_bg']:.3g} [{base['t_lower']:.3g}, "
        f"{base['t_upper']:.3g}] vs 0 [0, {cand['t_upper']:.3g}]; cross {cross['diverged_pairs']}"
        f"/{cross['pairs']}; {x['verdict']['text']}"
    )


def test_thermostats_at_two_temperatures(
    thermostat_ref: ReferenceProcess, cold_thermostat_ref: ReferenceProcess, tmp_path: Path
) -> None:
    """Ideal samplers at 0.3 (baseline) and 0.1 (candidate): each recovered inside its 99.9 %
    interval, and the cross differences as many as two independent samplers of one model at
    these temperatures make: first differences at a shared prefix with probability
    1 − Σ softmax(z/0.3)·softmax(z/0.1), summed over the positions at risk (measure.cross), so
    |O − E| within 3.29 of its SD (99.9 %). Neither is seeded: the test fails about 3 times in a
    thousand by design."""
    out = tmp_path / "thermo"
    cp = tbg(
        "measure", "--base-url", thermostat_ref.base_url, "--model", "smollm2",
        "--compare", cold_thermostat_ref.base_url, "--prompt-limit", "4", "--runs", "5",
        "--max-tokens", "12", "--level", "0.999", "--out", str(out),
    )  # fmt: skip
    assert cp.returncode == 0, cp.stderr
    (x,) = load_json(out / "report.json")["compare"]["loads"]
    for side, t in (("baseline", THERMOSTAT_T), ("candidate", COLD_T)):
        row = x[side]
        assert row["t_lower"] <= t <= row["t_upper"], (side, row)
    assert x["baseline"]["t_lower"] > 0  # 0.3 is visibly random
    assert x["cross"]["diverged_pairs"] > 0
    check = boltzmann_check(
        _records(out, "sut"), _records(out, "cand"), THERMOSTAT_T, COLD_T, level=0.999
    )
    assert check is not None and check.pairs == 4 * 5 * 5
    assert check.expected > 0 and check.z is not None
    print(
        f"\nthermostats 0.3 vs 0.1: T_bg {x['baseline']['t_bg']:.3g} and "
        f"{x['candidate']['t_bg']:.3g}; cross first differences {check.observed} observed vs "
        f"{check.expected:.1f} predicted at the true temperatures (z {check.z:.2f}); "
        f"at the estimated ones: {x['boltzmann']['reading']}"
    )
    assert abs(check.z) <= 3.29, check
    assert check.reading == "consistent"


def _timeless(cmp: dict[str, Any]) -> list[dict[str, Any]]:
    """The compare block's figures that depend on the answers only (not on timings)."""
    out = []
    for x in cmp["loads"]:
        rows = {
            side: {k: v for k, v in x[side].items() if not k.startswith(("throughput", "latency"))}
            for side in ("baseline", "candidate")
        }
        v = {k: x["verdict"][k] for k in ("outcome", "removed", "removed_lower", "removed_upper")}
        out.append(
            {
                **rows,
                "load": x["load"],
                "cross": x["cross"],
                "boltzmann": x["boltzmann"],
                "verdict": v,
            }
        )
    return out


def test_an_interrupted_comparison_resumes_to_the_same_report(
    serial_ref: ReferenceProcess, serial_fp32_ref: ReferenceProcess, tmp_path: Path
) -> None:
    """Both endpoints are reproducible, so a straight sweep and one stopped in the candidate's
    first level then resumed must report the same figures (timings aside)."""

    def args(out: Path, *extra: str) -> list[str]:
        return [
            "sweep", "--base-url", serial_ref.base_url, "--model", "smollm2",
            "--compare", serial_fp32_ref.base_url, "--prompt-limit", "3", "--runs", "2",
            "--max-tokens", "8", "--levels", "1,2", "--out", str(out), *extra,
        ]  # fmt: skip

    straight = tmp_path / "straight"
    cp = tbg(*args(straight))
    assert cp.returncode == 0, cp.stderr
    whole = load_json(straight / "sweep.json")
    assert whole["complete"] is True and whole["compare"]["complete"] is True
    assert [x["load"] for x in whole["compare"]["loads"]] == [1, 2]

    resumed = tmp_path / "resumed"
    cp = tbg(*args(resumed, "--max-requests", "9"))  # 6 baseline runs, then 3 of the candidate's
    assert cp.returncode == 0, cp.stderr
    assert "--max-requests reached" in cp.stderr
    part = load_json(resumed / "sweep.json")
    assert part["complete"] is False and part["compare"]["complete"] is False
    assert len(_records(resumed, "sut")) == 6 and len(_records(resumed, "cand")) == 3
    cp = tbg(*args(resumed))
    assert cp.returncode == 0, cp.stderr
    assert "candidate load 1: 3 of 6 runs already in" in cp.stderr
    keys = runs_keys(resumed)
    assert len(keys) == len(set(keys)) == 24
    again = load_json(resumed / "sweep.json")
    assert again["complete"] is True and again["compare"]["complete"] is True
    assert _timeless(again["compare"]) == _timeless(whole["compare"])
    strip = ("throughput_tps", "latency_p50_s", "latency_p95_s")
    assert [{k: v for k, v in r.items() if k not in strip} for r in again["levels"]] == [
        {k: v for k, v in r.items() if k not in strip} for r in whole["levels"]
    ]
    # a candidate other than the one in DIR is refused, naming the difference
    cp = tbg(*[a if a != serial_fp32_ref.base_url else serial_ref.base_url for a in args(resumed)])
    assert cp.returncode == 2 and "compare_url" in cp.stderr
