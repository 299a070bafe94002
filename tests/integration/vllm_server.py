"""Start the real vLLM CPU server (deploy/vllm-cpu/run) from Python, for tests and experiments.

    with VllmProcess() as vllm:          # free loopback port, waits until /v1/models answers
        client = OpenAI(base_url=vllm.base_url, api_key="x")

The run script and vLLM (with its engine-core child) run in their own session; on exit the whole
process group gets SIGTERM, then SIGKILL after a grace period. If the server dies or is not ready in
time, `VllmError` is raised with the tail of its log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from reference.launch import free_port, models_answer

REPO = Path(__file__).resolve().parents[2]
RUN_SCRIPT = REPO / "deploy" / "vllm-cpu" / "run"
SERVED_MODEL = "smollm2"


class VllmError(RuntimeError):
    """The vLLM server could not be started (or died); the message carries its log tail."""


def cache_dir() -> Path:
    return Path(os.environ.get("TBG_CACHE_DIR") or Path.home() / ".cache" / "tbg-proxy")


def venv_dir() -> Path:
    return Path(os.environ.get("VLLM_VENV") or cache_dir() / "vllm-venv")


def model_dir() -> Path:
    return cache_dir() / "smollm2-135m-instruct-bf16"


def venv_ready() -> bool:
    """True when deploy/vllm-cpu/setup finished (marker written only after an import check)."""
    return (venv_dir() / ".tbg-vllm-ready").is_file()


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class VllmProcess:
    """Sync context manager around deploy/vllm-cpu/run on a free 127.0.0.1 port."""

    def __init__(
        self,
        *,
        model: Path | str | None = None,
        port: int | None = None,
        ready_timeout: float = 240.0,
        log_path: Path | str | None = None,
        scratch: Path | str | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.model = Path(model) if model is not None else model_dir()
        self.port = port or free_port()
        self.ready_timeout = ready_timeout
        self._own_log = log_path is None
        self.log_path = (
            Path(log_path)
            if log_path is not None
            else Path(tempfile.mkstemp(prefix="vllm-cpu-", suffix=".log")[1])
        )
        self.scratch = Path(scratch) if scratch is not None else None
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_seconds: float | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    def start(self) -> VllmProcess:
        if not venv_ready():
            raise VllmError(f"no vLLM venv at {venv_dir()}: run deploy/vllm-cpu/setup")
        if not (self.model / "config.json").is_file():
            raise VllmError(f"no model folder at {self.model}: run `tbg reference --prepare`")
        cmd = [str(RUN_SCRIPT), "--port", str(self.port), "--model", str(self.model)]
        cmd += ["--log", str(self.log_path), "--ready-timeout", str(int(self.ready_timeout) + 5)]
        cmd += ["--watch-pid", str(os.getpid())]
        if self.scratch is not None:
            cmd += ["--scratch", str(self.scratch)]
        if self.extra_args:
            cmd += ["--", *self.extra_args]
        t0 = time.monotonic()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        deadline = t0 + self.ready_timeout
        while True:
            if self.proc.poll() is not None:
                rc = self.proc.returncode
                self.stop()
                raise VllmError(f"vLLM exited ({rc}) before it was ready:\n{self.log_tail()}")
            if models_answer(self.base_url):
                self.ready_seconds = time.monotonic() - t0
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise VllmError(
                    f"vLLM not ready after {self.ready_timeout:.0f}s:\n{self.log_tail()}"
                )
            time.sleep(0.5)

    def check_alive(self) -> None:
        """Raise VllmError with the log tail if the server has died."""
        if self.proc is None or self.proc.poll() is not None:
            raise VllmError(f"vLLM is not running:\n{self.log_tail()}")

    def stop(self, grace: float = 15.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
        # vLLM's engine-core child shares the group; make sure nothing of it survives.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)

    def __enter__(self) -> VllmProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self._own_log and exc_type is None:
            with contextlib.suppress(OSError):
                self.log_path.unlink()


if __name__ == "__main__":  # manual smoke: python tests/integration/vllm_server.py
    with VllmProcess() as v:
        print(f"ready in {v.ready_seconds:.1f}s at {v.base_url}; Ctrl-C to stop")
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                v.check_alive()
                time.sleep(1)
