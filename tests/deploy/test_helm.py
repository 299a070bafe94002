"""deploy/kubernetes/tbg-proxy: rendered offline with helm, every object valid against the Kubernetes
schemas; the PrometheusRule carries exactly deploy/prometheus/rules (the promtool-tested file, read at
test time) and the dashboard ConfigMaps equal grafana/dashboards."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "kubernetes" / "tbg-proxy"
RULES = ROOT / "deploy" / "prometheus" / "rules"
DASHBOARDS = ROOT / "grafana" / "dashboards"
KUBE_VERSION = "1.30.0"


def test_chart_files_are_the_repository_files() -> None:
    # The chart reads the rules and dashboards through symlinks, so it cannot drift from them.
    assert (CHART / "files" / "rules").resolve() == RULES
    assert (CHART / "files" / "dashboards").resolve() == DASHBOARDS
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    assert values["probes"]["liveness"]["path"] == "/healthz"
    assert values["probes"]["readiness"]["path"] == "/readyz"


def _render(*sets: str) -> list[dict[str, Any]]:
    helm = shutil.which("helm")
    if helm is None:
        pytest.skip("helm binary not on PATH (no registry here ships one; see docs/deploy.md)")
    args = [helm, "template", "t", str(CHART), "--kube-version", KUBE_VERSION]
    for s in sets:
        args += ["--set", s]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=60)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_every_object_validates_against_kubernetes_schemas() -> None:
    docs = _render()
    kv = pytest.importorskip("kubernetes_validate")
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # CRDs: not in the core schemas; checked below
        kv.validate(doc, KUBE_VERSION, strict=True)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler"} <= kinds
    assert {"PodDisruptionBudget", "ServiceMonitor", "PrometheusRule"} <= kinds


def test_prometheusrule_is_exactly_the_rules_files() -> None:
    (rule,) = _by_kind(_render("prometheus.release=kps"), "PrometheusRule")
    expected = []
    for path in sorted(RULES.glob("*.yml")):
        expected += yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
    assert rule["spec"]["groups"] == expected
    assert rule["metadata"]["labels"]["release"] == "kps"
    (mon,) = _by_kind(_render("prometheus.release=kps"), "ServiceMonitor")
    assert mon["metadata"]["labels"]["release"] == "kps"


def test_dashboard_configmaps_equal_grafana_json() -> None:
    maps = [
        d
        for d in _by_kind(_render(), "ConfigMap")
        if d["metadata"]["labels"].get("grafana_dashboard")
    ]
    got = {k: json.loads(v) for d in maps for k, v in d["data"].items()}
    want = {p.name: json.loads(p.read_text(encoding="utf-8")) for p in DASHBOARDS.glob("*.json")}
    assert got == want


def test_grace_period_matches_drain_seconds() -> None:
    docs = _render("drainSeconds=45")
    (dep,) = _by_kind(docs, "Deployment")
    spec = dep["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] > 45
    config = next(d for d in _by_kind(docs, "ConfigMap") if "proxy.yaml" in d["data"])
    assert yaml.safe_load(config["data"]["proxy.yaml"])["drain_seconds"] == 45
