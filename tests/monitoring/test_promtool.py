"""The rule files pass `promtool check rules` / `promtool test rules`, are not stale, and the unit
tests can fail (a broken rule makes them fail)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from estimator.profile import ROOT_WINDOW, critical_values, small_count
from grafana import promql
from tests.golden import assert_same_data
from tests.monitoring import pooled_cases
from tests.monitoring.common import PROM_DIR, ROOT, RULES_DIR, RUNBOOKS, rules_gen
from tests.monitoring.promserver import PROMTOOL

pytestmark = [
    pytest.mark.prometheus,
    pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (scripts/setup --dev)"),
]
TESTS = sorted((PROM_DIR / "tests").glob("*.test.yml"))


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL
    return subprocess.run(
        [PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=240, check=False
    )


def test_committed_pooled_tests_are_generated() -> None:
    """Compared as data: the curves are folded by numpy, whose last digits follow the CPU."""
    for path, text in pooled_cases.outputs().items():
        assert_same_data(
            path.read_text(encoding="utf-8"), text, path.name,
            "run python -m tests.monitoring.pooled_cases",
        )  # fmt: skip


def test_rule_thresholds_are_the_estimators() -> None:
    gen = rules_gen()
    assert critical_values(0.95)[0] == gen.TWO_SIDED_95
    assert small_count(0.95) == gen.SMALL_COUNT_95
    assert gen.ROOT_WINDOW == ROOT_WINDOW


def test_committed_rules_are_generated_from_rules_gen() -> None:
    gen = rules_gen()
    for name, text in gen.outputs().items():
        committed = (RULES_DIR / name).read_text(encoding="utf-8")
        assert_same_data(committed, text, name, "run python deploy/prometheus/rules_gen.py")
    assert {p.name for p in RULES_DIR.glob("*.yml")} == set(gen.outputs())


def test_promtool_check_rules() -> None:
    out = promtool("check", "rules", *sorted(RULES_DIR.glob("*.rules.yml")))
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_check_example_config() -> None:
    out = promtool("check", "config", PROM_DIR / "prometheus.yml")
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_unit_tests() -> None:
    assert len(TESTS) >= 2
    out = promtool("test", "rules", *TESTS)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    alerts = {r["alert"] for g in yaml.safe_load((RULES_DIR / "tbg-alerts.rules.yml").read_text())[
        "groups"] for r in g["rules"]}  # fmt: skip
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert alerts <= firing, alerts - firing
    assert alerts <= quiet, alerts - quiet


def test_unit_tests_fail_when_the_ceiling_rule_is_broken(tmp_path: Path) -> None:
    """Guard against tests that cannot fail: flip the ceiling comparison and promtool must object."""
    (tmp_path / "rules").mkdir()
    for f in RULES_DIR.glob("*.rules.yml"):
        text = f.read_text()
        if f.name == "tbg-alerts.rules.yml":
            text, n = re.subn(
                r"lower:mle1h > on \(model_name\)", "lower:mle1h < on (model_name)", text
            )
            assert n == 1
        (tmp_path / "rules" / f.name).write_text(text)
    (tmp_path / "tests").mkdir()
    test = PROM_DIR / "tests" / "tbg-pooled.test.yml"
    shutil.copy(test, tmp_path / "tests" / test.name)
    out = promtool("test", "rules", tmp_path / "tests" / test.name)
    assert out.returncode != 0
    assert "TbgAboveCeiling" in out.stdout + out.stderr


def _numbers_out(text: str) -> str:
    return re.sub(r"\d+(\.\d+)?[smhd]?", "N", text.replace("-e2e", ""))


def test_e2e_copy_differs_only_in_numbers(tmp_path: Path) -> None:
    gen = rules_gen()
    test_files = gen.outputs(gen.Params.for_test())
    for name, text in test_files.items():
        (tmp_path / name).write_text(text)
        prod = gen.outputs()[name]
        assert _numbers_out(text) == _numbers_out(prod)
    out = promtool("check", "rules", *sorted(tmp_path.glob("*.yml")))
    assert out.returncode == 0, out.stdout + out.stderr


def _alert_rules() -> list[dict[str, object]]:
    doc = yaml.safe_load((RULES_DIR / "tbg-alerts.rules.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def test_alerts_follow_the_conventions() -> None:
    rules = _alert_rules()
    assert len(rules) >= 9
    for rule in rules:
        name = str(rule["alert"])
        assert re.fullmatch(r"Tbg[A-Z][A-Za-z0-9]+", name), name
        labels = rule["labels"]
        ann = rule["annotations"]
        assert isinstance(labels, dict) and isinstance(ann, dict)
        assert labels["severity"] in {"critical", "warning", "info"}
        for value in labels.values():
            assert "{{" not in str(value) and "$value" not in str(value), (name, value)
        assert {"summary", "description", "runbook_url"} <= set(ann), name
        assert "$value" in ann["description"], f"{name}: the value belongs in the description"
        url = str(ann["runbook_url"])
        assert url.endswith(f"/docs/runbooks/{name}.md"), url
        runbook = RUNBOOKS / f"{name}.md"
        assert runbook.is_file(), runbook
        text = runbook.read_text()
        assert text.startswith(f"# {name}") and "## What it means" in text and "o do" in text


def test_recording_rules_are_named_level_metric_operation() -> None:
    doc = yaml.safe_load((RULES_DIR / "tbg-recording.rules.yml").read_text())
    for g in doc["groups"]:
        for r in g["rules"]:
            level, metric, op = r["record"].split(":")
            assert level and metric.startswith("tbg_") and op, r["record"]
            # the level lists the labels the result keeps, in this order
            assert re.fullmatch(r"(route|upstream)(_model_name)?(_load_bucket)?(_grid_t)?", level)
            assert promql.counter_misuse(r["expr"], set()) == [], r["record"]


def test_runbooks_exist_only_for_alerts() -> None:
    names = {str(r["alert"]) for r in _alert_rules()}
    assert {p.stem for p in RUNBOOKS.glob("*.md")} == names
    assert (ROOT / "docs" / "monitoring.md").is_file()
