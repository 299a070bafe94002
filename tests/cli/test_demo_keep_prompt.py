"""The demo's question at the end, in a real pseudo-terminal: `y` keeps the servers up, anything
else (or no answer) stops them; off a terminal nothing is asked."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DRIVER = (
    "import asyncio, sys\n"
    "import proxy.demo as demo\n"
    "demo.KEEP_PROMPT_S = float(sys.argv[1])\n"
    "print('KEEP', asyncio.run(demo._keep_up(None, sys.stdout)), flush=True)\n"
)


def _ask(answer: bytes | None, wait: float = 20.0) -> str:
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(wait)],
        stdin=slave, stdout=slave, stderr=slave, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, close_fds=True,
    )  # fmt: skip
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 30
    try:
        while b"[y/N]" not in seen and time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                seen += os.read(master, 4096)
        if answer is not None:
            os.write(master, answer)
        while b"KEEP " not in seen or not seen.rstrip().endswith((b"True", b"False")):
            if time.monotonic() > deadline:
                break
            if select.select([master], [], [], 0.5)[0]:
                try:
                    seen += os.read(master, 4096)
                except OSError:
                    break
        proc.wait(timeout=20)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return seen.decode(errors="replace")


@pytest.mark.parametrize(("answer", "kept"), [(b"y\n", True), (b"yes\n", True), (b"\n", False)])
def test_the_answer_decides(answer: bytes, kept: bool) -> None:
    out = _ask(answer)
    assert (
        "keep the proxy and the reference upstream up to explore them (until Ctrl-C)? [y/N]" in out
    )
    assert f"KEEP {kept}" in out, out


def test_no_answer_stops_them() -> None:
    assert "KEEP False" in _ask(None, wait=1.0)


def test_off_a_terminal_nothing_is_asked() -> None:
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, "20"], capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=30, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.stdout == "KEEP False\n" and done.returncode == 0, done.stderr
