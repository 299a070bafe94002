"""Client disconnects cancel decoding; SIGTERM answers in-flight requests with 503 and exits fast."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from reference.launch import ReferenceProcess
from tests.reference._runs import THREADS

pytestmark = pytest.mark.reference

COUNTING = {"model": "smollm2", "prompt": "1, 2, 3, 4,", "max_tokens": 400, "temperature": 0}


def _metric(base_url: str, name: str) -> float:
    text = httpx.get(base_url.removesuffix("/v1") + "/metrics", timeout=30).text
    line = next(ln for ln in text.splitlines() if ln.startswith(name + "{"))
    return float(line.split()[-1])


def test_client_disconnect_cancels_the_decode(batched_server: ReferenceProcess) -> None:
    url = batched_server.base_url
    before = _metric(url, "vllm:generation_tokens_total")
    with httpx.stream(
        "POST", f"{url}/completions", json={**COUNTING, "stream": True}, timeout=60
    ) as r:
        assert r.status_code == 200
        lines = 0
        for line in r.iter_lines():
            lines += bool(line)
            if lines >= 3:
                break
    time.sleep(3.0)
    generated = _metric(url, "vllm:generation_tokens_total") - before
    assert _metric(url, "vllm:num_requests_running") == 0
    assert 3 <= generated < 60  # would run to 400 tokens if the decode were not cancelled


def test_sigterm_aborts_in_flight_requests_with_503() -> None:
    with ReferenceProcess(mode="serial", extra_args=THREADS) as ref:
        statuses: list[int] = []
        client = threading.Thread(
            target=lambda: statuses.append(
                httpx.post(f"{ref.base_url}/completions", json=COUNTING, timeout=60).status_code
            )
        )
        client.start()
        time.sleep(2.0)
        t0 = time.monotonic()
        ref.stop()
        stop_s = time.monotonic() - t0
        client.join(30)
        assert statuses == [503]
        assert stop_s < 5.0, ref.stderr_tail()
        assert "stopped in" in ref.stderr_tail()
