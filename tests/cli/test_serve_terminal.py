"""`tbg serve` at a terminal (a real pseudo-terminal): the start-up sentence a person reads names
the port the system chose for `--port 0` in every URL, the live page among them, and those URLs
answer."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
SENTENCE = re.compile(
    r"^tbg serve: proxy at http://127\.0\.0\.1:(\d+)/v1 -> default \(http://127\.0\.0\.1:9/v1\); "
    r"shadow replay on: m; .*; live T_bg at http://127\.0\.0\.1:(\d+)/tbg; "
    r"live page http://127\.0\.0\.1:(\d+)/ui\r?$",
    re.M,
)


def test_port_0_at_a_terminal_prints_the_bound_port_in_every_url() -> None:
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", "serve", "--upstream", "http://127.0.0.1:9/v1",
         "--model", "m", "--port", "0"],
        stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, cwd=ROOT, close_fds=True,
    )  # fmt: skip
    os.close(slave)
    seen = ""
    match = None
    try:
        deadline = time.monotonic() + 30
        while match is None and time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                try:
                    seen += os.read(master, 4096).decode(errors="replace")
                except OSError:
                    break
                match = SENTENCE.search(seen)
        assert match, seen
        ports = {int(p) for p in match.groups()}
        assert len(ports) == 1 and 0 not in ports, match.group(0)
        (port,) = ports
        assert "127.0.0.1:0/" not in seen
        page = httpx.get(f"http://127.0.0.1:{port}/ui", timeout=10)
        assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
        assert httpx.get(f"http://127.0.0.1:{port}/tbg", timeout=10).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            os.close(master)
