"""The live demo display in a real terminal: tmux at 80 columns, the display code driven by a small
bounded script, then `tmux capture-pane`. Redrawn in place, the status appears once, however long
its lines and however many redraws; moving up by lines instead of screen rows piles up stale copies.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

DRIVER = textwrap.dedent(
    """
    import sys, time
    from proxy.demo_display import Screen, render

    def est(i):
        return {
            "upstream": "reference-upstream-with-a-long-name", "model_name": "smollm2",
            "estimate": 0.01 * i, "lower": 0.001 * i, "upper": 0.02 * i, "method": "likelihood",
            "diverged": i, "pairs": 10 * i, "tokens_at_risk": 1234 * i, "hazard": 0.00123,
            "jitter_sigma": 0.0456,
            "by_load": {
                b: {"estimate": 0.01, "lower": 0.0, "upper": 0.1, "diverged": i, "pairs": 5 * i}
                for b in ("1", "4", "8")[: 1 + i % 3]
            },
        }

    rounds = int(sys.argv[1])
    with Screen(sys.stdout) as screen:
        for i in range(rounds):
            report = {
                "accounting": {"sampled": i, "replayed": i, "dropped": 0, "failed": 0},
                "queue_depth": i % 4,
                "estimates": [est(i)] if i else [],
            }
            screen.show(render(report, i, rounds, float(i)))
            time.sleep(0.02)
    print("DRIVER-DONE")
    """
)


NO_TMUX = pytest.mark.skipif(
    shutil.which("tmux") is None, reason="tmux is not installed (scripts/setup --dev)"
)


def _run_in_tmux(tmp_path: Path, rounds: int, columns: int, rows: int) -> tuple[str, str]:
    """The driver in a private tmux pane of `columns` x `rows`: the pane's text (its scrollback
    too) once the driver is done, and the pane's width as tmux reports it."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER, encoding="utf-8")
    sock = f"tbg-test-{uuid.uuid4().hex[:8]}"  # a private tmux server, never the user's
    tmux = ["tmux", "-L", sock, "-f", "/dev/null"]
    cmd = f"{sys.executable} {driver} {rounds}; sleep 30"
    subprocess.run(
        [*tmux, "new-session", "-d", "-x", str(columns), "-y", str(rows), "-s", "t", cmd],
        check=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=20,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            pane = subprocess.run(
                [*tmux, "capture-pane", "-p", "-S", "-", "-t", "t"],
                capture_output=True, text=True, check=True, timeout=10,
            ).stdout  # fmt: skip
            if "DRIVER-DONE" in pane or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        width = subprocess.run(
            [*tmux, "display", "-p", "-t", "t", "#{pane_width}"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()  # fmt: skip
    finally:
        subprocess.run([*tmux, "kill-server"], check=False, timeout=10)
    return pane, width


@NO_TMUX
def test_live_display_redraws_in_place_at_80_columns(tmp_path: Path) -> None:
    rounds = 40
    pane, width = _run_in_tmux(tmp_path, rounds, 80, 40)
    assert width == "80"
    assert "DRIVER-DONE" in pane, pane
    lines = [line for line in pane.splitlines() if line.strip()]
    headers = [line for line in lines if line.startswith("tbg demo —")]
    assert len(headers) == 1, pane  # one status block: no stale copies above it
    assert f"primaries {rounds - 1}/{rounds}" in headers[0]
    assert sum("T_bg =" in line for line in lines) == 1, pane
    assert all(len(line) <= 80 for line in lines)
    # the long lines were cut, not wrapped: the estimate line ends in an ellipsis
    assert any(line.endswith("…") for line in lines), pane


@NO_TMUX
def test_a_frame_taller_than_the_terminal_leaves_no_stale_copies(tmp_path: Path) -> None:
    """Five rows for a six-line frame: while it runs the frame is cut to the screen; the final
    one is left whole, once, in the scrollback."""
    rounds = 30
    pane, width = _run_in_tmux(tmp_path, rounds, 60, 5)
    assert width == "60"
    assert "DRIVER-DONE" in pane, pane
    lines = [line for line in pane.splitlines() if line.strip()]
    headers = [line for line in lines if line.startswith("tbg demo —")]
    assert len(headers) == 1, pane
    assert f"primaries {rounds - 1}/{rounds}" in headers[0]
    assert sum("T_bg =" in line for line in lines) == 1, pane
    assert any(line.startswith("      load   1: T_bg") for line in lines), pane  # the last line
    assert all(len(line) <= 60 for line in lines)
