"""Run the `tbg` CLI in a subprocess and check its output files."""

from __future__ import annotations

import csv
import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def tbg(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "proxy.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def popen_tbg(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a valid PNG file (signature and IHDR checked)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    w, h = struct.unpack(">II", data[16:24])
    assert data.rstrip(b"\x00")[-8:-4] == b"IEND", f"{path} is truncated"
    return int(w), int(h)


def assert_readable_png(path: Path) -> None:
    w, h = png_size(path)
    assert 600 <= w <= 2000 and 400 <= h <= 1500, (w, h)
    assert path.stat().st_size > 10_000  # a blank canvas compresses to a few kB


def load_json(path: Path) -> Any:
    return json.loads(path.read_text("utf-8"))


def runs_keys(directory: Path) -> list[tuple[Any, ...]]:
    lines = (directory / "runs.jsonl").read_text("utf-8").splitlines()
    return [tuple(json.loads(line)["key"].values()) for line in lines if line.strip()]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))
