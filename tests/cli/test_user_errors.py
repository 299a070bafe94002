"""Every user error of `tbg demo`, `tbg reference` and `tbg serve` flag parsing: exactly one line
naming what to fix, exit status 2, no traceback; `--help` shows the defaults."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

TBG = [sys.executable, "-m", "proxy.cli"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TBG, *args], capture_output=True, text=True, timeout=60, check=False)


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 2, out
    assert "Traceback" not in out.stderr and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["demo", "--waves", "1,x"],
            "tbg demo: --waves: '1,x' is not a comma-separated list of integers, e.g. 1,4,8",
        ),
        (
            ["demo", "--waves", "1,0"],
            "tbg demo: --waves: every wave must be an integer ≥ 1, e.g. 1,4,8 (got '1,0')",
        ),
        (
            ["demo", "--temperature", "0.1"],
            "tbg demo: --temperature only applies to --mode thermostat (the mode is batched)",
        ),
        (
            ["demo", "--mode", "serial", "--sigma", "1"],
            "tbg demo: --sigma only applies to --mode noise (the mode is serial)",
        ),
        (["demo", "--sample-rate", "2"], "tbg demo: --sample-rate: 2 is outside [0, 1]"),
        (
            ["demo", "--requets", "4"],
            "tbg demo: unrecognized arguments: --requets 4 (did you mean --requests?); "
            "see `tbg demo --help`",
        ),
        (
            ["demo", "--requests", "many"],
            "tbg demo: argument --requests: invalid int value: 'many'; see `tbg demo --help`",
        ),
        (
            ["reference", "--mode", "serial", "--max-batch", "4"],
            "tbg reference: --max-batch only applies to --mode batched (the mode is serial)",
        ),
        (
            ["reference", "--temperature", "0.1"],
            "tbg reference: --temperature only applies to --mode thermostat (the mode is batched)",
        ),
        (["reference", "--mode", "noise"], "tbg reference: --mode noise needs --sigma S >= 0"),
        (
            ["serve", "--sampel-rate", "1"],
            "tbg serve: unrecognized arguments: --sampel-rate 1 (did you mean --sample-rate?); "
            "see `tbg serve --help`",
        ),
    ],
)
def test_user_error_is_one_line_exit_2(args: list[str], message: str) -> None:
    assert one_line_error(run(*args)) == message


def test_taken_ports_are_named_before_anything_loads() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        taken = (
            f"127.0.0.1:{port} is already in use: stop what listens there or choose another --port"
        )
        assert one_line_error(run("demo", "--port", str(port))) == f"tbg demo: {taken}"
        out = run("reference", "--mode", "serial", "--port", str(port))
        assert one_line_error(out) == f"tbg reference: {taken}"


def test_demo_port_defaults_to_8080_or_a_free_one() -> None:
    from proxy.demo import DEFAULT_PORT, choose_port, port_taken

    assert choose_port(1234) == (1234, "")
    port, note = choose_port(None)
    if port_taken(DEFAULT_PORT):
        assert port == 0 and f"{DEFAULT_PORT} is taken" in note
    else:
        assert (port, note) == (DEFAULT_PORT, "")


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        ("demo", ["(default: 48)", "(default: 1,4,8)", "(default: 1.0)", "(default: 900.0)"]),
        ("reference", ["(default: batched)", "(default: 8000)", "(default 8)"]),
        ("serve", ["(default 8080", "(default 0.1)", "(default 30)"]),
    ],
)
def test_help_shows_defaults(command: str, shown: list[str]) -> None:
    out = run(command, "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    for item in shown:
        assert item in text, (item, text)
