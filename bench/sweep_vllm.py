"""`tbg sweep` against real vLLM on CPU (deploy/vllm-cpu): does T_bg grow with concurrency?

    python bench/sweep_vllm.py --out /tmp/sweep-vllm [--levels 1,8 --prompts 16 --runs 2 --max-tokens 16]

Starts vLLM on a free loopback port (tests/integration/vllm_server.py, needs the vLLM venv made by
deploy/vllm-cpu/setup and the converted model), runs the sweep through the real CLI, prints its
table and stops vLLM. Too slow for CI's budget; the figures are in docs/measure.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.vllm_server import SERVED_MODEL, VllmProcess  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True)
    p.add_argument("--levels", default="1,8")
    p.add_argument("--prompts", default="16")
    p.add_argument("--runs", default="2")
    p.add_argument("--max-tokens", default="16")
    args = p.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with VllmProcess(ready_timeout=300) as vllm:
        print(f"vLLM ready in {vllm.ready_seconds or 0:.1f} s at {vllm.base_url}", flush=True)
        cmd = [
            sys.executable, "-m", "proxy.cli", "sweep", "--base-url", vllm.base_url,
            "--model", SERVED_MODEL, "--levels", args.levels, "--prompt-limit", args.prompts,
            "--runs", args.runs, "--max-tokens", args.max_tokens, "--out", args.out,
            "--time-limit", "900",
        ]  # fmt: skip
        print("$ tbg " + " ".join(cmd[3:]), flush=True)
        return subprocess.run(cmd, cwd=REPO, env=env, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())
