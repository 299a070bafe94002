"""`ReferenceProcess`: run the reference upstream as a subprocess (tests, demo, benchmarks).

    with ReferenceProcess(mode="serial") as ref:
        client = openai.OpenAI(base_url=ref.base_url, api_key="unused")

Starts `python -m reference --port P --host 127.0.0.1 ...` on a free loopback port, waits until
`/v1/models` answers, and on exit terminates it (SIGTERM, then SIGKILL after a grace period).
If the child dies or never answers, raises `ReferenceStartError` with the tail of its stderr.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from types import TracebackType
from typing import IO, Self

HOST = "127.0.0.1"
PARENT_ENV = "TBG_REFERENCE_PARENT_PID"


def models_answer(base_url: str) -> bool:
    """True when an OpenAI-compatible server at `base_url` (…/v1) answers GET /models with 200."""
    try:
        with urllib.request.urlopen(f"{base_url}/models", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


class ReferenceStartError(RuntimeError):
    """The reference upstream did not come up."""


def free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ReferenceProcess:
    """A sync context manager owning one `tbg reference` subprocess on a free loopback port."""

    def __init__(
        self,
        mode: str = "serial",
        temperature: float | None = None,
        sigma: float | None = None,
        extra_args: Sequence[str] = (),
        ready_timeout: float = 180.0,
        grace: float = 10.0,
    ) -> None:
        self.mode = mode
        self.temperature = temperature
        self.sigma = sigma
        self.extra_args = tuple(extra_args)
        self.ready_timeout = ready_timeout
        self.grace = grace
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self.start_seconds: float | None = None

    @property
    def base_url(self) -> str:
        if not self.port:
            raise RuntimeError("ReferenceProcess is not started")
        return f"http://{HOST}:{self.port}/v1"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "reference", "--mode", self.mode]
        cmd += ["--host", HOST, "--port", str(self.port)]
        if self.temperature is not None:
            cmd += ["--temperature", repr(self.temperature)]
        if self.sigma is not None:
            cmd += ["--sigma", repr(self.sigma)]
        return cmd + list(self.extra_args)

    def start(self) -> None:
        self.port = free_port()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        env[PARENT_ENV] = str(os.getpid())  # the child exits when this process is gone
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (owned; closed in close())
        t0 = time.monotonic()
        self._proc = subprocess.Popen(
            self.command(),
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            env=env,
        )
        deadline = t0 + self.ready_timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                raise ReferenceStartError(
                    f"reference ({self.mode}) exited with {code} during start:\n"
                    f"{self.stderr_tail()}"
                )
            if self._answers():
                self.start_seconds = time.monotonic() - t0
                return
            if time.monotonic() > deadline:
                self.stop()
                raise ReferenceStartError(
                    f"reference ({self.mode}) not ready after {self.ready_timeout:.0f}s:\n"
                    f"{self.stderr_tail()}"
                )
            time.sleep(0.2)

    def _answers(self) -> bool:
        return models_answer(self.base_url)

    def stderr_tail(self, limit: int = 4000) -> str:
        if self._stderr is None:
            return ""
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", errors="replace")[-limit:]

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(self.grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        self.stop()
        if self._stderr is not None:
            with contextlib.suppress(OSError):
                self._stderr.close()
            self._stderr = None

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
