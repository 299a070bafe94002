"""Smoke of the performance harness (bench/perf.py): it runs end to end and writes its JSON.

Bounded (a few hundred requests, ~15 s): direct and tbg arms only. No figure is asserted (speed
targets live in docs/benchmarks.md); what is checked is that every arm was measured, the proxy
answered every request with 200 (the harness raises otherwise) and the added latency is computed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_harness_measures_direct_and_tbg(tmp_path: Path) -> None:
    out = tmp_path / "perf.json"
    args = [sys.executable, "-m", "bench.perf", "--arms", "direct,tbg", "--requests", "200",
            "--stream-requests", "20", "--block", "50", "--seconds", "10", "--levels", "4",
            "--wrk-seconds", "1", "--repeats", "1", "--growth-requests", "0", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(args, cwd=ROOT, env=env, check=True, timeout=120, capture_output=True)
    result = json.loads(out.read_text())
    assert result["arms"] == ["direct", "tbg"]
    for phase in ("latency_c1", "stream_c1"):
        assert set(result[phase]) == {"direct", "tbg"}
    assert result["latency_c1"]["tbg"]["n"] >= 200
    assert result["latency_c1"]["direct"]["added_p50_ms"] == 0.0
    tbg = result["latency_c1"]["tbg"]
    assert tbg["added_p50_ms"] == tbg["p50_ms"] - result["latency_c1"]["direct"]["p50_ms"]
    assert result["rss_idle_mb"]["tbg"] > 0
    if isinstance(result["load"], dict):  # wrk installed
        assert result["load"]["tbg"]["max_rps"] > 0
        assert result["rss_after_load_mb"]["tbg"] > 0
