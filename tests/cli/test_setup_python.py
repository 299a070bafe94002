"""Which Python the README's commands install into (scripts/python-env, sourced by scripts/setup,
scripts/demo and scripts/test), run as a user meets it: a copy of the script in an empty checkout,
a controlled PATH, the real interpreters of this machine.

- the system python3 is externally managed (PEP 668, Debian's /usr/bin/python3): .venv/ in the
  checkout is created, then reused, and the user is told how to activate it;
- an active venv, or a python3 pip may install into (pyenv): used as it is, no .venv/;
- python3 cannot make a venv (Debian without python3-venv) and the user is not root: the exact
  command to run first, exit 1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PY = Path("/usr/bin/python3")


def _managed(python: Path) -> bool:
    if not python.exists():
        return False
    probe = (
        "import os, sys, sysconfig; print(sys.prefix == sys.base_prefix and os.path.exists("
        "os.path.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED')))"
    )
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=False)
    return out.stdout.strip() == "True"


def _checkout(tmp: Path) -> Path:
    repo = tmp / "checkout"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "python-env", repo / "scripts" / "python-env")
    return repo


def _bin_with(tmp: Path, python: Path | str) -> Path:
    """A PATH folder whose python3 is `python` (and nothing else of ours)."""
    bindir = tmp / "bin"
    bindir.mkdir(exist_ok=True)
    (bindir / "python3").unlink(missing_ok=True)
    (bindir / "python3").symlink_to(python)
    return bindir


def _env(path: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHON", "TBG_VENV"}}
    env.pop("TBG_ACTIVATE", None)
    return {**env, "PATH": path, **extra}


def _run(repo: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "scripts/python-env"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.skipif(
    not _managed(SYSTEM_PY), reason="no externally managed /usr/bin/python3 (PEP 668) here"
)
def test_an_externally_managed_python3_gets_a_venv_in_the_checkout_reused_next_time(
    tmp_path: Path,
) -> None:
    repo = _checkout(tmp_path)
    env = _env(f"{_bin_with(tmp_path, SYSTEM_PY)}:/usr/bin:/bin")
    pip = subprocess.run(
        [str(SYSTEM_PY), "-m", "pip", "install", "--dry-run", "--no-index", "tbg-proxy"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert "externally-managed-environment" in pip.stderr + pip.stdout  # what a user hits
    first = _run(repo, env)
    assert first.returncode == 0, first.stderr
    venv = repo / ".venv"
    assert first.stdout.strip() == f"{venv}/bin/python"
    assert first.stderr.strip() == (
        f"[setup] creating the virtual environment {venv} (the system python3 is externally "
        "managed (PEP 668); reused next time)"
    )
    pip_in_venv = subprocess.run(
        [f"{venv}/bin/python", "-m", "pip", "install", "--dry-run", "--no-index", "--no-deps",
         "pip"], capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert pip_in_venv.returncode == 0, pip_in_venv.stderr  # pip installs there
    marker = venv / "reused"
    marker.write_text("")
    second = _run(repo, env)
    assert second.returncode == 0 and second.stdout.strip() == f"{venv}/bin/python"
    assert second.stderr.strip().startswith(f"[setup] using the virtual environment {venv} (")
    assert marker.exists()  # the same venv, not a new one
    sourced = subprocess.run(
        ["bash", "-c", 'source scripts/python-env && tbg_python_env "$PWD" && '
         'echo "$TBG_ACTIVATE|$VIRTUAL_ENV|$(command -v python3)"'],
        cwd=repo, env=env, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert sourced.stdout.strip() == (f"source {venv}/bin/activate|{venv}|{venv}/bin/python3"), (
        sourced.stderr
    )


def test_an_active_venv_is_used_as_it_is(tmp_path: Path) -> None:
    repo = _checkout(tmp_path)
    venv = tmp_path / "mine"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    env = _env(f"{venv}/bin:/usr/bin:/bin", VIRTUAL_ENV=str(venv))
    done = _run(repo, env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{venv}/bin/python3" and done.stderr == ""
    assert not (repo / ".venv").exists()


def test_a_python3_pip_may_install_into_is_used_as_it_is(tmp_path: Path) -> None:
    here = Path(sys.executable)
    if sys.prefix != sys.base_prefix or _managed(here):
        pytest.skip("the test runs in a venv or an externally managed Python")
    assert Path(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED").exists() is False
    repo = _checkout(tmp_path)
    bindir = _bin_with(tmp_path, here)
    done = _run(repo, _env(f"{bindir}:/usr/bin:/bin"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{bindir}/python3" and done.stderr == ""
    assert not (repo / ".venv").exists()


@pytest.mark.skipif(
    not _managed(SYSTEM_PY), reason="no externally managed /usr/bin/python3 (PEP 668) here"
)
def test_without_python3_venv_and_not_root_it_says_what_to_run_first(tmp_path: Path) -> None:
    """Debian without python3-venv: `python3 -m venv` fails (no ensurepip). Fault injected: a
    python3 that is the real system one except that `-m venv` fails as Debian's does; `id -u`
    answers 1000 (not root), so nothing is installed."""
    repo = _checkout(tmp_path)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python3").write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then\n'
        '  echo "The virtual environment was not created successfully because ensurepip is not '
        'available." >&2; mkdir -p "$3/bin"; exit 1\n'
        "fi\n"
        f'exec {SYSTEM_PY} "$@"\n'
    )
    (bindir / "id").write_text("#!/bin/sh\necho 1000\n")
    for f in ("python3", "id"):
        (bindir / f).chmod(0o755)
    done = _run(repo, _env(f"{bindir}:/usr/bin:/bin"))
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines()[1:] == [
        "[setup] python3 cannot make a virtual environment (no ensurepip). Run first:",
        "          sudo apt-get install -y python3-venv    (Debian/Ubuntu)",
        "        or activate a venv of your own (python3 -m venv DIR && source DIR/bin/activate)",
    ]
    assert not (repo / ".venv").exists()  # no half-made venv left to be "reused"
