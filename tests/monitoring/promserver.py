"""A real Prometheus (Debian's `prometheus` binary) for tests: 127.0.0.1, free port, temp storage,
stopped by the caller. Queried through its HTTP API."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from reference.launch import free_port

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
ALERTMANAGER = shutil.which("prometheus-alertmanager")
AMTOOL = shutil.which("amtool")


class Prometheus:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.proc = proc
        self.url = url
        self.log = log

    def query_sync(self, expr: str, time_s: float | None = None) -> dict[str, Any]:
        params: dict[str, str] = {"query": expr}
        if time_s is not None:
            params["time"] = f"{time_s:.3f}"
        r = httpx.post(f"{self.url}/api/v1/query", data=params, timeout=30)
        body: dict[str, Any] = r.json()
        return body

    async def query(self, client: httpx.AsyncClient, expr: str) -> dict[str, Any]:
        r = await client.post(f"{self.url}/api/v1/query", data={"query": expr}, timeout=30)
        body: dict[str, Any] = r.json()
        return body


@contextmanager
def run_prometheus(
    workdir: Path,
    scrape_targets: list[str] | None = None,
    rule_files: list[Path] | None = None,
    interval: str = "1s",
) -> Iterator[Prometheus]:
    """Start Prometheus with its own config in `workdir`; yields once /-/ready answers."""
    assert PROMETHEUS, "Debian's prometheus package is not installed (scripts/setup --dev)"
    port = free_port()
    config: dict[str, Any] = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(p) for p in rule_files or []],
        "scrape_configs": [
            {
                "job_name": "tbg-proxy",
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "static_configs": [{"targets": scrape_targets or []}],
            }
        ],
    }
    cfg = workdir / "prometheus.yml"
    cfg.write_text(yaml.safe_dump(config), encoding="utf-8")
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={cfg}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
                "--query.lookback-delta=30s",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"prometheus not ready: {log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield Prometheus(proc, url, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
