"""Resumability and interruption through the real CLI: bounded runs, SIGINT, reruns that skip
what is done, and a refusal when the parameters change."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from reference.launch import ReferenceProcess
from tests.measure.helpers import load_json, popen_tbg, runs_keys, tbg

pytestmark = [pytest.mark.reference, pytest.mark.slow]


def _measure_args(ref: ReferenceProcess, out: Path, *extra: str) -> list[str]:
    return [
        "measure", "--base-url", ref.base_url, "--model", "smollm2", "--prompt-limit", "3",
        "--runs", "2", "--max-tokens", "8", "--out", str(out), *extra,
    ]  # fmt: skip


def test_bounded_then_resumed_without_duplicates(
    serial_ref: ReferenceProcess, tmp_path: Path
) -> None:
    out = tmp_path / "m"
    first = tbg(*_measure_args(serial_ref, out, "--max-requests", "2"))
    assert first.returncode == 0, first.stderr
    assert "--max-requests reached" in first.stderr
    assert len(runs_keys(out)) == 2
    partial = load_json(out / "report.json")
    assert partial["complete"] is False and partial["counts"]["endpoint_runs"] == 2
    second = tbg(*_measure_args(serial_ref, out))
    assert second.returncode == 0, second.stderr
    assert "2 of 6 runs already in" in second.stderr
    keys = runs_keys(out)
    assert len(keys) == 6 == len(set(keys))
    report = load_json(out / "report.json")
    assert report["complete"] is True and report["model_free"]["runs"] == 6
    assert report["estimates"]["likelihood"]["estimate"] == 0.0
    # A third run has nothing left to do and sends nothing.
    third = tbg(*_measure_args(serial_ref, out))
    assert third.returncode == 0 and "6 of 6 runs already in" in third.stderr
    assert len(runs_keys(out)) == 6
    # Other parameters in the same directory are refused, with the difference named.
    cp = tbg(*_measure_args(serial_ref, out, "--max-tokens", "9"))
    assert cp.returncode == 2
    assert "other parameters" in cp.stderr and "max_tokens: 8 (in DIR) != 9 (now)" in cp.stderr
    assert "Traceback" not in cp.stderr
    assert len(runs_keys(out)) == 6


def test_sigint_writes_what_was_measured(serial_ref: ReferenceProcess, tmp_path: Path) -> None:
    out = tmp_path / "s"
    args = [
        "sweep", "--base-url", serial_ref.base_url, "--model", "smollm2", "--prompt-limit", "2",
        "--runs", "2", "--max-tokens", "8", "--levels", "1,2", "--out", str(out),
    ]  # fmt: skip
    proc = popen_tbg(*args)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "runs.jsonl").exists() and len(runs_keys(out)) >= 2:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the sweep ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out_text, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "load " in out_text  # the table of what was measured
    assert "interrupted; wrote what was measured" in stderr
    assert "Traceback" not in stderr
    data = load_json(out / "sweep.json")
    assert data["complete"] is False
    done = len(runs_keys(out))
    assert 2 <= done < 8
    assert sum(row["runs"] for row in data["levels"]) == done
    # The rerun completes the sweep without redoing (or duplicating) the interrupted part.
    cp = tbg(*args)
    assert cp.returncode == 0, cp.stderr
    keys = runs_keys(out)
    assert len(keys) == 8 == len(set(keys))
    assert load_json(out / "sweep.json")["complete"] is True
