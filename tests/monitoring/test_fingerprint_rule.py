"""TbgBackendChangeMovedTbg's promtool tests can fail: with either half of the rule removed (the
change, or the move beyond the interval), promtool objects."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.monitoring.common import PROM_DIR, RULES_DIR
from tests.monitoring.promserver import PROMTOOL

pytestmark = [
    pytest.mark.prometheus,
    pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (scripts/setup --dev)"),
]
TEST = PROM_DIR / "tests" / "tbg-fingerprint.test.yml"
CHANGED = (
    "\nand on (upstream, model_name)\n"
    "sum by (upstream, model_name) (increase(tbg_backend_fingerprint_changes_total[6h])) > 0"
)


def run(tmp_path: Path, old: str, new: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    text = (RULES_DIR / "tbg-alerts.rules.yml").read_text()
    assert text.count(old) >= 1, old
    (tmp_path / "rules" / "tbg-alerts.rules.yml").write_text(text.replace(old, new))
    shutil.copy(TEST, tmp_path / "tests" / TEST.name)
    return subprocess.run(
        [PROMTOOL, "test", "rules", str(tmp_path / "tests" / TEST.name)],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip


def test_the_rule_passes_its_tests(tmp_path: Path) -> None:
    out = run(tmp_path, "", "")
    assert out.returncode == 0, out.stdout + out.stderr


def test_without_the_change_a_move_alone_would_fire(tmp_path: Path) -> None:
    indented = CHANGED.replace("\n", "\n      ")
    out = run(tmp_path, indented, "")
    assert out.returncode != 0 and "TbgBackendChangeMovedTbg" in out.stdout + out.stderr


def test_without_the_move_a_change_alone_would_fire(tmp_path: Path) -> None:
    # the upward branch compares the new epoch's upper bound: overlapping intervals pass
    current = 'tbg_temperature_by_epoch_lower{epoch="current"}'
    out = run(tmp_path, current, 'tbg_temperature_by_epoch_upper{epoch="current"}')
    assert out.returncode != 0 and "TbgBackendChangeMovedTbg" in out.stdout + out.stderr
