"""The example Alertmanager config is valid, routes by severity, and a real Alertmanager loads it."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.monitoring.common import ROOT
from tests.monitoring.promserver import ALERTMANAGER, AMTOOL, free_port

pytestmark = pytest.mark.prometheus
CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"


@pytest.mark.skipif(AMTOOL is None, reason="amtool not installed (Debian prometheus-alertmanager)")
def test_amtool_check_config() -> None:
    assert AMTOOL
    out = subprocess.run([AMTOOL, "check-config", str(CONFIG)], capture_output=True, text=True,
                         timeout=60, check=False)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


@pytest.mark.skipif(AMTOOL is None, reason="amtool not installed (Debian prometheus-alertmanager)")
@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=critical", "alertname=TbgAboveCeiling"], "pager"),
        (["severity=critical", "alertname=TbgUpstreamErrors"], "pager"),
        (["severity=warning", "alertname=TbgDriftAbove1dBaseline"], "chat"),
        (["severity=info", "alertname=Other"], "tickets"),
    ],
)
def test_routes_by_severity(labels: list[str], receiver: str) -> None:
    assert AMTOOL
    out = subprocess.run(
        [AMTOOL, "config", "routes", "test", f"--config.file={CONFIG}", *labels],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == receiver


@pytest.mark.skipif(ALERTMANAGER is None, reason="prometheus-alertmanager not installed")
def test_alertmanager_loads_the_config(tmp_path: Path) -> None:
    assert ALERTMANAGER
    port = free_port()
    log = tmp_path / "am.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [ALERTMANAGER, f"--config.file={CONFIG}", f"--storage.path={tmp_path}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/v2/status", timeout=2)
                if r.status_code == 200:
                    status = r.json()
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert status is not None, log.read_text()[-2000:]
        loaded = status["config"]["original"]
        assert "receiver: pager" in loaded and 'severity="critical"' in loaded
    finally:
        proc.terminate()
        proc.wait(timeout=20)
