"""`tbg demo` end to end, small: the real CLI, the real reference LLM, the real proxy."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from proxy.demo import parse_args
from proxy.demo_display import Screen, explore, next_step, progress_line, render, summary


def test_options_are_validated() -> None:
    opts = parse_args(["--requests", "6", "--waves", "1,3", "--mode", "thermostat"])
    assert opts.waves == (1, 3) and opts.requests == 6
    assert opts.temperature == 0.05  # thermostat needs a temperature; the demo picks a visible one
    assert opts.keep is None  # ask at a terminal
    assert parse_args(["--keep"]).keep is True and parse_args(["--no-keep"]).keep is False
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
    assert "http://127.0.0.1:1/ui (the live page)" in text and "stopped" not in text
    assert "below the ceiling 0.05" in text  # [0.004, 0.03] against the default ceiling
    mid = summary(report, [], "http://127.0.0.1:1", timed_out=False, ceiling=0.01)
    assert "undecided against the ceiling 0.01 (the interval contains it)" in mid
    low = summary(report, [], "http://127.0.0.1:1", timed_out=False, truth=0.01, ceiling=0.5)
    assert "(the reference samples at T = 0.01)" in low and "below the ceiling 0.5" in low
    high = summary(report, [], "http://127.0.0.1:1", timed_out=False, ceiling=0.001)
    assert "ABOVE the ceiling 0.001" in high and "TbgAboveCeiling.md" in high


def test_off_a_terminal_progress_is_one_line_and_the_full_block_comes_once() -> None:
    report = {"accounting": {"sampled": 3, "replayed": 2, "dropped": 0, "failed": 0},
              "queue_depth": 1, "estimates": []}  # fmt: skip
    out = io.StringIO()
    screen = Screen(out)
    for i in range(20):  # many redraws within 5 s: one progress line
        screen.show(render(report, i, 20, 1.0), line=progress_line(report, i, 20, 1.0))
    screen.show(render(report, 20, 20, 2.0), force=True, line=progress_line(report, 20, 20, 2.0))
    lines = out.getvalue().splitlines()
    assert lines[0] == "tbg demo    1s: primaries 0/20, replays 2 done, queue 1"
    assert sum(line.startswith("tbg demo —") for line in lines) == 1  # the final block only
    assert len(lines) == 1 + len(render(report, 20, 20, 2.0).splitlines())


class _Terminal(io.StringIO):
    """A terminal as far as the display can tell (its size comes from COLUMNS/LINES or 80 x 24)."""

    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_frame_is_redrawn_and_close_gives_the_terminal_back() -> None:
    report = {"accounting": {"sampled": 3, "replayed": 2, "dropped": 0, "failed": 0},
              "queue_depth": 1, "estimates": []}  # fmt: skip
    out, stdout = _Terminal(), sys.stdout
    with Screen(out) as screen:
        for i in range(3):
            screen.show(render(report, i, 3, float(i)), line=progress_line(report, i, 3, 1.0))
        print("written meanwhile")  # printed above the frame, not through it
        assert sys.stdout is not stdout
    assert sys.stdout is stdout
    text = out.getvalue()
    assert "\x1b[?25l" in text and text.rstrip().endswith("\x1b[?25h")  # the cursor is back
    assert text.count("primaries 2/3") >= 1 and "written meanwhile" in text
    assert "tbg demo    " not in text  # a terminal gets frames, not progress lines
    screen.close()  # closing twice is harmless


def test_the_ending_says_what_to_explore_and_what_to_run_next() -> None:
    text = explore("http://127.0.0.1:8123")
    for path in ("/ui", "/tbg?format=text", "/tbg", "/metrics", "/v1"):
        assert f"  http://127.0.0.1:8123{path} " in text
    assert "tbg status http://127.0.0.1:8123" in text and "curl http://127.0.0.1:8123/v1/" in text
    last = next_step("http://127.0.0.1:8123", "source /repo/.venv/bin/activate")
    assert "  tbg serve --upstream http://127.0.0.1:8000/v1 --model MODEL" in last.splitlines()
    assert "in a new shell, first: source /repo/.venv/bin/activate" in last
    assert "source" not in next_step("http://127.0.0.1:8123")


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.status, resp.read().decode()


@pytest.mark.reference
@pytest.mark.slow
def test_tbg_demo_runs_end_to_end() -> None:
    """Off a terminal, with --keep: progress lines, the summary, the servers still up to explore
    (their bound port printed, never :0), Ctrl-C stops them and the last lines say what to run."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", "demo", "--requests", "6", "--max-tokens", "12",
         "--waves", "1,3", "--port", "0", "--time-limit", "400", "--keep"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "TBG_ACTIVATE": ""},
    )  # fmt: skip
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + 600
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("serving until Ctrl-C") or time.monotonic() > deadline:
                break
        out = "".join(seen)
        assert "serving until Ctrl-C" in out, out[-3000:]
        assert ":0/" not in out and "127.0.0.1:0" not in out
        assert "primaries 6/6" in out
        assert sum(line.startswith("tbg demo —") for line in seen) == 1, out  # one full block
        assert re.search(r"^tbg demo +\d+s: primaries \d/6", out, re.M), out[-3000:]
        match = re.search(r"sampled (\d+) = replayed (\d+) \+ dropped (\d+) \+ failed (\d+)", out)
        assert match, out[-2000:]
        sampled, replayed, dropped, failed = map(int, match.groups())
        assert sampled == 6 and sampled == replayed + dropped + failed and replayed >= 1
        assert re.search(r"T_bg\(smollm2 via reference\) = \d\.\d{4}, 95% interval", out)
        served = re.search(r"served: (http://127\.0\.0\.1:\d+)/v1 .*/tbg .*/metrics", out)
        assert served, out[-2000:]
        base = served.group(1)
        for _ in range(6):  # the explore lines
            seen.append(proc.stdout.readline())
        assert f"  {base}/ui " in "".join(seen)
        status, body = _get(f"{base}/tbg?format=text")  # still up after the summary
        assert status == 200 and "smollm2" in body
        status, body = _get(f"{base}/metrics")
        assert status == 200 and "tbg_" in body
    finally:
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert f"stopped the proxy ({base})" in rest
    assert "  tbg serve --upstream http://127.0.0.1:8000/v1 --model MODEL" in rest.splitlines()
