"""Fixtures for the integration suite: one real vLLM server per session, one proxy in front of it,
and the reference upstream in each mode.

Missing prerequisites (the vLLM venv, the converted model folder) FAIL the tests when CI=true and
SKIP them with the reason otherwise. Measured figures are collected in `FIGURES` and printed in the
terminal summary ("integration figures"), so a CI log carries them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.integration.proxy_server import ProxyThread
from tests.integration.vllm_server import (
    VllmProcess,
    model_dir,
    venv_dir,
    venv_ready,
)

FIGURES: list[str] = []
TOOL_ARGS = ("--enable-auto-tool-choice", "--tool-call-parser", "hermes")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def missing(reason: str) -> None:
    """Fail in CI, skip locally: a prerequisite of the integration suite is absent."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: integration prerequisites must be installed)")
    pytest.skip(reason)


def figure(line: str) -> None:
    FIGURES.append(line)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("integration figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


def require_model() -> None:
    if not (model_dir() / "config.json").is_file():
        missing(f"no converted model at {model_dir()}: run `tbg reference --prepare`")


@pytest.fixture(scope="session")
def vllm_server() -> Iterator[VllmProcess]:
    if not venv_ready():
        missing(f"no vLLM venv at {venv_dir()}: run deploy/vllm-cpu/setup")
    require_model()
    # vLLM takes a named tool_choice (decoded with guided decoding) only with a tool parser, which
    # it loads only with auto tool choice on; requests without tools are unaffected
    # (test_vllm_decisions.py).
    with VllmProcess(ready_timeout=240, extra_args=TOOL_ARGS) as server:
        figure(f"vLLM ready in {server.ready_seconds:.1f} s ({server.base_url})")
        yield server
        server.check_alive()


@pytest.fixture(scope="session")
def vllm_proxy(vllm_server: VllmProcess) -> Iterator[ProxyThread]:
    with ProxyThread(vllm_server.base_url, name="vllm") as proxy:
        yield proxy
