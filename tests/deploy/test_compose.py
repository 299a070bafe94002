"""deploy/compose: both stacks parse and every path, port and variable they use exists in the repo."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import Overrides, load_config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose"
STACKS = ("cpu", "gpu")
SERVICES = {"upstream", "proxy", "prometheus", "alertmanager", "grafana"}


def _stack(name: str) -> dict[str, Any]:
    data = yaml.safe_load((COMPOSE / name / "compose.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _host_paths(name: str) -> list[tuple[Path, str]]:
    out = []
    for svc in _stack(name)["services"].values():
        for vol in svc.get("volumes", []):
            src, dst = vol.split(":")[:2]
            if src.startswith("."):
                out.append(((COMPOSE / name / src).resolve(), dst))
    return out


@pytest.mark.parametrize("name", STACKS)
def test_stack_has_the_five_services(name: str) -> None:
    services = _stack(name)["services"]
    assert set(services) == SERVICES
    for svc in services.values():
        for dep in svc.get("depends_on", []):
            assert dep in services


@pytest.mark.parametrize("name", STACKS)
def test_mounted_host_paths_exist(name: str) -> None:
    paths = _host_paths(name)
    assert paths
    for src, _ in paths:
        assert src.exists(), src


@pytest.mark.parametrize("name", STACKS)
def test_build_targets_exist_in_the_dockerfile(name: str) -> None:
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", (ROOT / "Dockerfile").read_text(), re.M))
    for svc in _stack(name)["services"].values():
        build = svc.get("build")
        if build:
            assert (COMPOSE / name / build["context"]).resolve() == ROOT
            assert build["target"] in stages


@pytest.mark.parametrize("name", STACKS)
def test_prometheus_loads_every_project_rule_file(name: str) -> None:
    mounts = {dst: src for src, dst in _host_paths(name)}
    rules_dir = mounts["/etc/prometheus/rules"]
    assert rules_dir == ROOT / "deploy" / "prometheus" / "rules"
    prom = yaml.safe_load(mounts["/etc/prometheus/prometheus.yml"].read_text())
    loaded = {Path(p).name for p in prom["rule_files"]}
    assert loaded == {p.name for p in rules_dir.glob("*.yml")}
    targets = [
        t for sc in prom["scrape_configs"] for c in sc["static_configs"] for t in c["targets"]
    ]
    services = _stack(name)["services"]
    for target in targets + prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]:
        host, port = target.split(":")
        assert host in services
        published = [p.split(":")[-1] for p in services[host].get("ports", [])]
        assert port in published or host == "proxy"


@pytest.mark.parametrize("name", STACKS)
def test_grafana_provisioning_points_at_the_mounted_dashboards(name: str) -> None:
    mounts = {dst: src for src, dst in _host_paths(name)}
    provider = yaml.safe_load(mounts["/etc/grafana/provisioning/dashboards/tbg.yml"].read_text())
    dash_path = provider["providers"][0]["options"]["path"]
    assert mounts[dash_path] == ROOT / "grafana" / "dashboards"
    ds = yaml.safe_load(mounts["/etc/grafana/provisioning/datasources/tbg.yml"].read_text())
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"


@pytest.mark.parametrize("name", STACKS)
def test_proxy_config_is_valid_and_matches_the_stack(name: str) -> None:
    services = _stack(name)["services"]
    mounts = {dst: src for src, dst in _host_paths(name)}
    config = load_config(Overrides(config_file=str(mounts["/etc/tbg/proxy.yaml"])), {})
    assert services["proxy"]["command"] == ["--config", "/etc/tbg/proxy.yaml"]
    assert any(p.endswith(f":{config.port}") for p in services["proxy"]["ports"])
    (upstream,) = config.upstreams
    assert upstream.base_url == "http://upstream:8000/v1"


def test_gpu_stack_switches_batch_invariance() -> None:
    vllm = _stack("gpu")["services"]["upstream"]
    assert vllm["image"].startswith("docker.io/vllm/vllm-openai:")
    assert vllm["environment"]["VLLM_BATCH_INVARIANT"] == "${VLLM_BATCH_INVARIANT:-0}"
    assert "--max-logprobs" in vllm["command"]


def _defaults(value: str) -> str:
    """`${VAR:-default}` -> default, as compose substitutes with VAR unset."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def test_reference_command_is_one_tbg_reference_accepts(capsys: pytest.CaptureFixture[str]) -> None:
    # The image's ENTRYPOINT is `tbg reference`; the stack's command is its arguments.
    from reference.cli import _validate, build_parser

    parser = build_parser()
    argv = [_defaults(a) for a in _stack("cpu")["services"]["upstream"]["command"]]
    args = parser.parse_args(argv)
    _validate(args, parser)  # exits 2 on a bad combination (e.g. --temperature without thermostat)
    assert capsys.readouterr().err == ""
    assert (args.host, args.port, args.mode) == ("0.0.0.0", 8000, "thermostat")
    assert args.temperature > 0


@pytest.mark.parametrize("name", STACKS)
def test_official_monitoring_images_by_default(name: str) -> None:
    # Swappable by environment variable (deploy/compose/smoke uses local stand-ins), official unset.
    services = _stack(name)["services"]
    for svc, var, official in (
        ("prometheus", "TBG_PROMETHEUS_IMAGE", "docker.io/prom/prometheus:"),
        ("alertmanager", "TBG_ALERTMANAGER_IMAGE", "docker.io/prom/alertmanager:"),
    ):
        image = services[svc]["image"]
        assert image.startswith(f"${{{var}:-")
        assert _defaults(image).startswith(official)
    assert services["grafana"]["image"].startswith("docker.io/grafana/grafana:")


def test_standins_provide_the_swapped_services() -> None:
    text = (COMPOSE / "standins" / "Containerfile").read_text(encoding="utf-8")
    stages = dict(re.findall(r"^FROM \S+ AS (\S+)$\n(.*?)(?=^FROM |\Z)", text, re.M | re.S))
    assert set(stages) == {"prometheus", "alertmanager"}
    for body in stages.values():
        assert re.search(r"^USER 65534", body, re.M)  # nobody, as in the official images
        assert re.search(r"^ENTRYPOINT \[\"/usr/bin/", body, re.M)
