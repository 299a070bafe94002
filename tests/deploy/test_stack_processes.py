"""The cpu compose stack's own configuration, run as host processes (CI cannot build images):
`tbg reference` as the stack runs it (thermostat), `tbg serve` with deploy/compose/config/proxy.yaml,
Debian's Prometheus with deploy/compose/config/prometheus.yml and the project's rules, Alertmanager
with deploy/alertmanager/alertmanager.yml. Only addresses are rewritten (service names -> loopback
ports) and the scrape/evaluation intervals shortened (30 s -> 1 s). Then deploy/smoke.py, the checker
deploy/compose/smoke runs against the containers, must pass: openai SDK chat + stream through the
proxy, the target up, every rule group loaded and evaluating, a recorded rate from scraped data, the
Alertmanager discovered and ready."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from reference.launch import ReferenceProcess, free_port
from tests.monitoring.promserver import ALERTMANAGER, PROMETHEUS

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose"
RULES = ROOT / "deploy" / "prometheus" / "rules"

pytestmark = [
    pytest.mark.reference,
    pytest.mark.prometheus,
    pytest.mark.slow,
    pytest.mark.skipif(
        PROMETHEUS is None or ALERTMANAGER is None,
        reason="Debian's prometheus / prometheus-alertmanager not installed (scripts/setup --dev)",
    ),
]


def _reference_args() -> tuple[str, float]:
    command = yaml.safe_load((COMPOSE / "cpu" / "compose.yaml").read_text())["services"][
        "upstream"
    ]["command"]
    mode = command[command.index("--mode") + 1]
    temperature = command[command.index("--temperature") + 1]  # ${TBG_REFERENCE_TEMPERATURE:-T}
    return mode, float(temperature.rsplit(":-", 1)[1].rstrip("}"))


@contextmanager
def _process(args: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[None]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(url: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready:\n{log.read_text(errors='replace')[-2000:]}")


def _proxy_config(tmp: Path, upstream: str, port: int) -> Path:
    data: dict[str, Any] = yaml.safe_load((COMPOSE / "config" / "proxy.yaml").read_text())
    assert data["upstreams"][0]["base_url"] == "http://upstream:8000/v1"
    data["upstreams"][0]["base_url"] = upstream
    data["host"], data["port"] = "127.0.0.1", port
    path = tmp / "proxy.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _prometheus_config(tmp: Path, proxy_port: int, am_port: int) -> Path:
    data: dict[str, Any] = yaml.safe_load((COMPOSE / "config" / "prometheus.yml").read_text())
    data["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    rules = []
    for name in data["rule_files"]:  # /etc/prometheus/rules/X -> a copy of RULES/X, 1 s groups
        src = yaml.safe_load((RULES / Path(name).name).read_text())
        for group in src["groups"]:
            group["interval"] = "1s"
        dst = tmp / Path(name).name
        dst.write_text(yaml.safe_dump(src), encoding="utf-8")
        rules.append(str(dst))
    data["rule_files"] = rules
    (job,) = data["scrape_configs"]
    assert job["static_configs"][0]["targets"] == ["proxy:8080"]
    job["static_configs"][0]["targets"] = [f"127.0.0.1:{proxy_port}"]
    (am,) = data["alerting"]["alertmanagers"]
    assert am["static_configs"][0]["targets"] == ["alertmanager:9093"]
    am["static_configs"][0]["targets"] = [f"127.0.0.1:{am_port}"]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_smoke_checker_passes_on_the_stack_configuration(tmp_path: Path) -> None:
    assert PROMETHEUS and ALERTMANAGER
    mode, temperature = _reference_args()
    proxy_port, prom_port, am_port = free_port(), free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with ExitStack() as stack:
        ref = stack.enter_context(ReferenceProcess(mode=mode, temperature=temperature))
        proxy_log = tmp_path / "proxy.log"
        config = _proxy_config(tmp_path, ref.base_url, proxy_port)
        stack.enter_context(
            _process(
                [sys.executable, "-m", "proxy.cli", "serve", "--config", str(config)],
                proxy_log,
                env,
            )
        )
        am_log = tmp_path / "am.log"
        stack.enter_context(
            _process(
                [
                    ALERTMANAGER,
                    f"--config.file={ROOT / 'deploy' / 'alertmanager' / 'alertmanager.yml'}",
                    f"--storage.path={tmp_path / 'am'}",
                    f"--web.listen-address=127.0.0.1:{am_port}",
                    "--cluster.listen-address=",
                ],
                am_log,
            )
        )
        prom_log = tmp_path / "prometheus.log"
        stack.enter_context(
            _process(
                [
                    PROMETHEUS,
                    f"--config.file={_prometheus_config(tmp_path, proxy_port, am_port)}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                ],
                prom_log,
            )
        )
        _wait_ready(f"http://127.0.0.1:{prom_port}/-/ready", prom_log)
        _wait_ready(f"http://127.0.0.1:{am_port}/-/ready", am_log)
        out = subprocess.run(
            [
                sys.executable,
                str(ROOT / "deploy" / "smoke.py"),
                "--proxy", f"http://127.0.0.1:{proxy_port}",
                "--prometheus", f"http://127.0.0.1:{prom_port}",
                "--alertmanager", f"http://127.0.0.1:{am_port}",
                "--timeout", "90", "--max-tokens", "8",
            ],
            capture_output=True, text=True, env=env, timeout=400, check=False,
        )  # fmt: skip
        logs = "\n".join(p.read_text(errors="replace")[-1500:] for p in (proxy_log, prom_log))
        assert out.returncode == 0, out.stderr[-3000:] + logs
    found = json.loads(out.stdout)
    print(json.dumps(found, indent=1), f"reference ready in {ref.start_seconds:.1f} s")
    assert found["proxy"]["models"] == ["smollm2"]
    assert found["proxy"]["stream_chunks"] > 1
    groups = sorted(
        g["name"] for p in RULES.glob("*.yml") for g in yaml.safe_load(p.read_text())["groups"]
    )
    assert found["prometheus"]["rule_groups"] == groups
    assert found["prometheus"]["alertmanagers"] == [f"http://127.0.0.1:{am_port}/api/v2/alerts"]
