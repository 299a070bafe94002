"""The chart's fleet option (`vllm.headlessService`), rendered with the real helm: a headless
Service over the vLLM pods that the proxy's ServiceMonitor does not select, and an upstream the
proxy's own config loader reads as discovered from that Service's DNS name, with model discovery;
the default values discover models from the one static upstream."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from yarl import URL

from proxy.config import Overrides, load_config
from tests.deploy.test_helm import CHART, KUBE_VERSION, _helm

FLEET = (
    "--set", "vllm.headlessService.enabled=true",
    "--set", "vllm.headlessService.refreshSeconds=5",
    "--set-json", 'vllm.headlessService.selector={"app":"vllm-qwen"}',
    "--set-json", 'config.upstreams=[{"name":"vllm","base_url":"http://old:8000/v1"},'
    '{"name":"hosted","base_url":"https://api.example.com/v1"}]',
)  # fmt: skip


def render(*args: str) -> list[dict[str, Any]]:
    out = _helm("template", "rel", str(CHART), "--kube-version", KUBE_VERSION,
                "--namespace", "llm", *args).stdout  # fmt: skip
    return [d for d in yaml.safe_load_all(out) if d]


def proxy_yaml(docs: list[dict[str, Any]], tmp_path: Path) -> Any:
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and "proxy.yaml" in d["data"]]
    path = tmp_path / "proxy.yaml"
    path.write_text(cm["data"]["proxy.yaml"], encoding="utf-8")
    return load_config(Overrides(config_file=str(path)), {})


def test_fleet_values_render_a_headless_service_and_a_discovered_upstream(
    tmp_path: Path,
) -> None:
    docs = render(*FLEET)
    kv = pytest.importorskip("kubernetes_validate")
    for doc in docs:
        if not doc["apiVersion"].startswith("monitoring.coreos.com/"):
            kv.validate(doc, KUBE_VERSION, strict=True)
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    headless = services["rel-vllm-pods"]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == {"app": "vllm-qwen"}
    assert headless["spec"]["ports"][0]["port"] == 8000
    (monitor,) = [d for d in docs if d["kind"] == "ServiceMonitor"]
    wanted = monitor["spec"]["selector"]["matchLabels"]
    labels = headless["metadata"]["labels"]
    assert not all(labels.get(k) == v for k, v in wanted.items())  # not scraped as a proxy
    config = proxy_yaml(docs, tmp_path)
    fleet, hosted = config.upstreams
    assert URL(fleet.base_url).host == "rel-vllm-pods.llm.svc.cluster.local"
    assert fleet.name == "vllm" and fleet.discovery.dns and fleet.discovery.refresh_seconds == 5
    assert fleet.discovery.max_pod_labels == 16 and fleet.model_discovery.enabled
    assert hosted.name == "hosted" and not hosted.discovery.dns  # the others stay as given
    assert config.shadow_config.load_source == "vllm_metrics"  # each pod's own /metrics
    chosen = proxy_yaml(render(*FLEET, "--set", "config.shadow.load_source=inflight"), tmp_path)
    assert chosen.shadow_config.load_source == "inflight"  # the config's choice wins


def test_default_values_discover_models_from_the_static_upstream(tmp_path: Path) -> None:
    docs = render()
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Service"] == ["rel-tbg-proxy"]
    config = proxy_yaml(docs, tmp_path)
    (upstream,) = config.upstreams
    assert upstream.model_discovery.enabled and not upstream.discovery.dns
    assert upstream.models == ()
    assert config.shadow_config.load_source == "inflight"


def test_fleet_values_lint_strict() -> None:
    out = _helm("lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION, *FLEET).stdout
    assert "0 chart(s) failed" in out


def test_the_headless_service_needs_a_selector() -> None:
    with pytest.raises(subprocess.CalledProcessError) as failed:
        render("--set", "vllm.headlessService.enabled=true")
    assert "vllm.headlessService.selector" in failed.value.stderr
