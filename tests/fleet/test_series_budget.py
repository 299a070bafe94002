"""The fleet's series budget on a live /metrics (docs/deploy.md, "The fleet case"): with 20 pods
behind the name and `max_pod_labels: 4`, the per-pod families hold 4 pods + `other`, and a pod's
series go when DNS stops listing it."""

from __future__ import annotations

import asyncio

from openai import AsyncOpenAI

from tests.fleet.harness import FakeResolver, metric_lines, proxy_for, serve
from tests.shadow.conftest import FakeLLM

FLEET_FAMILIES = ("tbg_upstream_endpoints", "tbg_pod_", "tbg_discovery_", "tbg_discovered_")


def fleet_series(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(FLEET_FAMILIES)]


async def test_per_pod_series_stay_within_the_budget() -> None:
    pod = FakeLLM(running=3)
    runner, port = await serve(pod.app())
    # 20 "pods": one real server and 19 addresses that refuse (no server on those ports)
    others = [("127.0.0.1", p) for p in range(1, 20)]
    resolver = FakeResolver([("127.0.0.1", port), *others])
    up = {"models": ["m"], "discovery": {"dns": True, "refresh_seconds": 0.05, "max_pod_labels": 4},
          "model_discovery": {"enabled": True, "refresh_seconds": 0.05}}  # fmt: skip
    shadow = {"enabled": True, "sample_rate": 1.0, "replays": 1, "replays_per_minute": 1e6,
              "tokens_per_minute": 1e9, "load_source": "vllm_metrics", "load_poll_seconds": 0.05}  # fmt: skip
    try:
        async with proxy_for(resolver, port, up, shadow=shadow) as proxy:
            async with AsyncOpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0) as oai:
                for _ in range(5):
                    await oai.chat.completions.create(
                        model="m", messages=[{"role": "user", "content": "hi"}], temperature=0
                    )
            await asyncio.sleep(0.2)
            series = fleet_series(await proxy.metrics())
            # 2 endpoint states + 3 per-pod families x (4 labelled + other) + 2 x 2 refresh
            # outcomes + 1 discovered-model count: the budget whatever the number of pods
            assert len(series) <= 2 + 3 * (4 + 1) + 4 + 1, series
            pods = {line.split('pod="')[1].split('"')[0] for line in series if 'pod="' in line}
            assert len(pods) == 5 and "other" in pods
            assert (
                metric_lines("\n".join(series), "tbg_upstream_endpoints")[
                    'tbg_upstream_endpoints{state="up",upstream="fleet"}'
                ]
                + metric_lines("\n".join(series), "tbg_upstream_endpoints")[
                    'tbg_upstream_endpoints{state="down",upstream="fleet"}'
                ]
                == 20
            )
            resolver.answer = [("127.0.0.1", port)]  # the others leave
            await asyncio.sleep(0.2)
            series = fleet_series(await proxy.metrics())
            pods = {line.split('pod="')[1].split('"')[0] for line in series if 'pod="' in line}
            assert pods == {f"127.0.0.1:{port}", "other"}  # the pooled counter stays a counter
            gauges = [line for line in series if line.startswith("tbg_pod_in_flight")]
            assert gauges == [
                f'tbg_pod_in_flight_requests{{pod="127.0.0.1:{port}",upstream="fleet"}} 0.0'
            ]  # the one pod left got a freed label
            running = metric_lines("\n".join(series), "tbg_pod_running_requests")
            assert running == {
                f'tbg_pod_running_requests{{pod="127.0.0.1:{port}",upstream="fleet"}}': 3.0
            }
    finally:
        await runner.cleanup()
