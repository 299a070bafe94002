"""`tbg demo` end to end, small: the real CLI, the real reference LLM, the real proxy."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from proxy.demo import parse_args, render, summary


def test_options_are_validated() -> None:
    opts = parse_args(["--requests", "6", "--waves", "1,3", "--mode", "thermostat"])
    assert opts.waves == (1, 3) and opts.requests == 6
    assert opts.temperature == 0.05  # thermostat needs a temperature; the demo picks a visible one
    with pytest.raises(SystemExit):
        parse_args(["--waves", "0"])


def test_render_and_summary_show_estimates_and_accounting() -> None:
    est = {
        "upstream": "reference", "model_name": "smollm2", "estimate": 0.0123, "lower": 0.004,
        "upper": 0.03, "method": "likelihood", "diverged": 2, "pairs": 10, "tokens_at_risk": 300,
        "hazard": 0.0066, "jitter_sigma": 0.01,
        "by_load": {"8": {"estimate": 0.02, "lower": 0.01, "upper": 0.05, "diverged": 2, "pairs": 6}},
    }  # fmt: skip
    report = {"accounting": {"sampled": 5, "replayed": 4, "dropped": 1, "failed": 0},
              "queue_depth": 0, "estimates": [est], "exemplars": []}  # fmt: skip
    screen = render(report, 5, 5, 12.0)
    assert "T_bg = 0.0123 [0.0040, 0.0300] (likelihood)" in screen
    assert "load   8" in screen
    text = summary(report, [], "http://127.0.0.1:1", timed_out=False)
    assert "sampled 5 = replayed 4 + dropped 1 + failed 0" in text
    assert "http://127.0.0.1:1/metrics" in text and "http://127.0.0.1:1/tbg" in text
    assert "below the ceiling 0.05" in text  # [0.004, 0.03] against the default ceiling
    mid = summary(report, [], "http://127.0.0.1:1", timed_out=False, ceiling=0.01)
    assert "undecided against the ceiling 0.01 (the interval contains it)" in mid
    low = summary(report, [], "http://127.0.0.1:1", timed_out=False, truth=0.01, ceiling=0.5)
    assert "(the reference samples at T = 0.01)" in low and "below the ceiling 0.5" in low
    high = summary(report, [], "http://127.0.0.1:1", timed_out=False, ceiling=0.001)
    assert "ABOVE the ceiling 0.001" in high and "TbgAboveCeiling.md" in high


@pytest.mark.reference
@pytest.mark.slow
def test_tbg_demo_runs_end_to_end() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "demo", "--requests", "6", "--max-tokens", "12",
         "--waves", "1,3", "--port", "0", "--time-limit", "400"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "primaries 6/6" in out
    match = re.search(r"sampled (\d+) = replayed (\d+) \+ dropped (\d+) \+ failed (\d+)", out)
    assert match, out[-2000:]
    sampled, replayed, dropped, failed = map(int, match.groups())
    assert sampled == 6 and sampled == replayed + dropped + failed and replayed >= 1
    assert re.search(r"T_bg\(smollm2 via reference\) = \d\.\d{4}, 95% interval", out), out[-2000:]
    assert re.search(r"served \(now stopped\): http://127\.0\.0\.1:\d+/v1 .*/metrics, .*/tbg", out)
    assert re.search(r"/tbg, http://127\.0\.0\.1:\d+/ui \(live page", out)
