"""`tbg measure` and `tbg sweep` say what to do next, as a user meets them: the cause of a refused
connection, how many runs would decide an undecided sweep (and that those runs do decide it), which
of two temperatures to believe."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from estimator.profile import critical_values, upper_drop
from estimator.simulate import simulate_pairs
from measure import analysis
from measure.advice import (
    ABOVE,
    data_factor,
    power_margin,
    runs_for,
    runs_to_decide,
    which_to_believe,
)
from reference.launch import ReferenceProcess, free_port
from tests.measure.helpers import load_json, tbg


def test_a_refused_connection_prints_its_cause(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens
    cp = tbg(
        "measure", "--base-url", url, "--model", "m", "--prompt-limit", "2", "--runs", "2",
        "--out", str(tmp_path / "m"),
    )  # fmt: skip
    assert cp.returncode == 1
    assert cp.stderr.splitlines()[-1] == (
        f"tbg measure: nothing measured: all 4 requests to {url} failed, e.g. "
        "APIConnectionError: Connection error. (Connection refused)"
    )
    assert "sut" not in cp.stderr  # the progress line says what it counts
    assert cp.stderr.startswith("endpoint runs [")
    cp = tbg(
        "sweep", "--base-url", url, "--model", "m", "--prompt-limit", "3", "--runs", "2",
        "--levels", "1,2", "--out", str(tmp_path / "s"),
    )  # fmt: skip
    assert cp.returncode == 1
    assert cp.stderr.splitlines()[-1] == (
        "tbg sweep: nothing measured: the first 5 requests failed (APIConnectionError: "
        f"Connection error. (Connection refused)); endpoint {url}"
    )


def test_one_default_ceiling() -> None:
    from measure.sweep import build_parser
    from proxy.shadow.config import ModelPolicy

    args = build_parser().parse_args(["--base-url", "u", "--model", "m", "--out", "o"])
    assert args.ceiling == ModelPolicy().ceiling == 0.05


def _curve(estimate: float, width: float, diverged: int) -> analysis.ProfileCurve:
    """A parabolic profile in log T: ℓ(T) − ℓ(T̂) = −(log T − log T̂)² / (2 width²)."""
    ts = np.geomspace(1e-4, 1.0, 400)
    drop = -((np.log(ts) - math.log(estimate)) ** 2) / (2 * width**2)
    upper = estimate * math.exp(width * math.sqrt(2 * upper_drop(diverged)))
    return analysis.ProfileCurve(
        ts.tolist(),
        drop.tolist(),
        -critical_values(0.95)[0],
        -upper_drop(diverged),
        estimate,
        0.0,
        upper,
        0.95,
        False,
    )


def test_data_factor_is_where_k_times_the_profile_reaches_the_ceiling() -> None:
    curve = _curve(0.01, 0.5, diverged=40)
    assert data_factor(curve, 40, curve.upper * 1.01) == 1.0  # decided already
    assert data_factor(curve, 40, 0.009) == ABOVE  # estimate above the ceiling
    ceiling = 0.02
    k = data_factor(curve, 40, ceiling)
    assert k is not None and k > 1
    depth = (math.log(ceiling) - math.log(0.01)) ** 2 / (2 * 0.5**2)
    assert k * depth == pytest.approx(upper_drop(40 * k), rel=1e-3)  # the upper end, k× the data
    assert runs_for(2.0, runs=4, others=0) == 7  # 3 runs after the first, twice: 6
    assert runs_for(2.0, runs=4, others=1) == 8  # with the lowest load's run: 4 -> 8
    assert runs_for(1.0, runs=4, others=0) == 4
    assert power_margin(0.95) == pytest.approx((1 + 0.8416 / 1.96) ** 2, rel=1e-3)


def test_runs_to_decide_names_each_level_and_the_next_command() -> None:
    line = runs_to_decide([(1, 7), (8, ABOVE), (16, None)], 0.05, 4)
    assert line == (
        "runs per prompt that would likely (about 3 times in 4) show each level under the ceiling "
        "0.05, if its estimate holds (now 4): load 1: ~7; load 8: estimate at or above the ceiling "
        "(more runs would likely show it unsafe); load 16: cannot tell. Next: rerun with --runs 7 "
        "(the runs already made are kept) to decide load 1."
    )
    assert runs_to_decide([(1, ABOVE)], 0.05, 4).endswith(
        "No level's estimate is below the ceiling."
    )


def test_the_projection_decides_a_deterministic_stack_4_times_in_5() -> None:
    """Simulated greedy stack without noise (T_bg 0, the one-sided bound): 20 data sets of 60
    pairs, a ceiling at half the upper bound, the projected amount of new data drawn afresh."""
    rng = np.random.default_rng(0)
    decided = 0
    for _ in range(20):
        r, curve = analysis.likelihood(_sim(rng, 60, 0.0), level=0.95)
        ceiling = r.upper / 2
        k = data_factor(curve, _diverged(r), ceiling)
        assert k is not None and k > 1
        r2, _ = analysis.likelihood(
            _sim(rng, math.ceil(k * power_margin(0.95) * 60), 0.0), level=0.95
        )
        decided += r2.upper <= ceiling
    assert 12 <= decided <= 20  # ~80 %: binomial(20, 0.8) is in [12, 20] with 99.0 % probability


def test_the_projection_decides_a_noisy_stack_about_3_times_in_4() -> None:
    """Simulated ideal stack at T_bg = 0.02, ceiling 0.04, data sets of 8 pairs: of those left
    undecided, the projected amount of new data decides 26 of 31 (84 %; 20 of 31 without the
    margin). The bounds leave room for another seed, not for a projection that does not help."""
    rng = np.random.default_rng(1)
    tried = decided = even = 0
    for _ in range(40):
        r, curve = analysis.likelihood(_sim(rng, 8, 0.02), level=0.95)
        k = data_factor(curve, _diverged(r), 0.04)
        if k is None or k == ABOVE or k == 1.0:
            continue
        tried += 1
        r2, _ = analysis.likelihood(
            _sim(rng, math.ceil(k * power_margin(0.95) * 8), 0.02), level=0.95
        )
        r3, _ = analysis.likelihood(_sim(rng, math.ceil(k * 8), 0.02), level=0.95)
        decided += r2.upper <= 0.04
        even += r3.upper <= 0.04
    assert tried >= 20
    assert decided / tried >= 0.6 and even / tried <= 0.7, (tried, decided, even)


def _diverged(r: Any) -> int:
    return int(r.diagnostics.diverged_trials)


def _sim(rng: np.random.Generator, pairs: int, temperature: float) -> list[Any]:
    return simulate_pairs(rng, pairs=pairs, length=32, temperature=temperature).trials()


def test_which_to_believe_says_why_they_differ() -> None:
    lk = {"estimate": 0.0, "lower": 0.0, "upper": 0.095}
    inside = which_to_believe({"likelihood": lk, "jitter": {"estimate": 0.038}})
    assert inside is not None and inside.startswith(
        "Which to believe: T_bg is the likelihood figure."
    )
    assert inside.endswith(
        "Here the jitter (0.038) lies inside the likelihood's interval: they agree."
    )
    above = which_to_believe({"likelihood": lk, "jitter": {"estimate": 0.2}})
    assert above is not None and "above the likelihood's upper bound (0.095)" in above
    below = which_to_believe(
        {"likelihood": {"estimate": 0.1, "lower": 0.05, "upper": 0.2}, "jitter": {"estimate": 0.01}}
    )
    assert below is not None and "below the likelihood's lower bound (0.05)" in below
    assert which_to_believe({"likelihood": lk}) is None


@pytest.mark.reference
@pytest.mark.slow
def test_an_undecided_sweep_says_how_many_runs_decide_it_and_they_do(
    serial_ref: ReferenceProcess, tmp_path: Path
) -> None:
    """Serial mode is deterministic (T_bg 0), so only the one-sided upper bound moves with the
    runs, and more runs repeat the same logits: the projection is exact there. A ceiling 1.5x
    below the bound of 2 runs: no recommendation and a projected --runs; rerun with it, the same
    sweep (resumed) recommends load 1."""
    out = tmp_path / "sweep"
    common = (
        "sweep", "--base-url", serial_ref.base_url, "--model", "smollm2", "--prompt-limit", "3",
        "--max-tokens", "8", "--levels", "1", "--out", str(out),
    )  # fmt: skip
    first = tbg(*common, "--runs", "2", "--ceiling", "1.0")
    assert first.returncode == 0, first.stderr
    upper = load_json(out / "sweep.json")["levels"][0]["t_upper"]
    ceiling = f"{upper / 1.5:.6g}"
    undecided = tbg(*common, "--runs", "2", "--ceiling", ceiling)
    assert undecided.returncode == 0, undecided.stderr
    assert f"recommendation: none (no level keeps the T_bg upper bound under {ceiling})" in (
        undecided.stdout
    )
    tail = undecided.stdout.split("Next: rerun with --runs ")
    assert len(tail) == 2, undecided.stdout
    runs = int(tail[1].split()[0])
    assert 2 < runs <= 12, undecided.stdout
    decided = tbg(*common, "--runs", str(runs), "--ceiling", ceiling)
    assert decided.returncode == 0, decided.stderr
    assert "recommendation: load 1 (" in decided.stdout, decided.stdout
