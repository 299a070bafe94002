"""The fleet case end to end with the real reference LLM: two `tbg reference` processes (SmolLM2 on
CPU, serial mode: T_bg = 0) on distinct 127.0.0.1 ports behind one name, the proxy discovering them
(injected resolver) and their model (/v1/models), the real openai SDK as client. Each pod serves
its share of primaries and exactly its own replays (by its own vllm:request_success count), the
model gets its own label, and the serial pods never diverge."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from openai import AsyncOpenAI

from proxy.shadow.wiring import SHADOW
from reference.launch import ReferenceProcess
from tests.fleet.harness import FakeResolver, metric_lines, proxy_for

pytestmark = [pytest.mark.reference, pytest.mark.slow]

PROMPTS = ["Why is the sky blue?", "List three uses of copper.", "Describe a sunrise.",
           "Explain what a hash table is."]  # fmt: skip


@pytest.fixture(scope="module")
def two_pods() -> Iterator[tuple[ReferenceProcess, ReferenceProcess]]:
    # One torch thread each: the test process needs the rest of the box.
    one = ("--threads", "1")
    with (
        ReferenceProcess(mode="serial", extra_args=one) as a,
        ReferenceProcess(mode="serial", extra_args=one) as b,
    ):
        yield a, b


def served(ref: ReferenceProcess) -> float:
    text = httpx.get(ref.base_url.removesuffix("/v1") + "/metrics", timeout=10).text
    found = re.findall(r"^vllm:request_success_total\{[^}]*\} ([0-9.e+]+)$", text, re.MULTILINE)
    return sum(float(v) for v in found)


async def test_two_reference_pods_behind_one_name(
    two_pods: tuple[ReferenceProcess, ReferenceProcess],
) -> None:
    a, b = two_pods
    resolver = FakeResolver([("127.0.0.1", a.port), ("127.0.0.1", b.port)])
    up = {"model_discovery": {"enabled": True}}  # no `models:`: smollm2 is discovered
    shadow = {"enabled": True, "sample_rate": 1.0, "replays": 1, "replays_per_minute": 1e6,
              "tokens_per_minute": 1e9, "load_source": "vllm_metrics", "load_poll_seconds": 0.5}  # fmt: skip
    before = served(a), served(b)
    async with proxy_for(resolver, a.port, up, shadow=shadow) as proxy:
        tap = proxy.app[SHADOW]
        async with AsyncOpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0,
                               timeout=300) as oai:  # fmt: skip
            for prompt in PROMPTS:  # one at a time: round-robin over the two pods
                await oai.chat.completions.create(
                    model="smollm2", messages=[{"role": "user", "content": prompt}],
                    temperature=0, max_tokens=8,
                )  # fmt: skip
                assert await tap.idle(300.0)
        report = await proxy.tbg()
        metrics = await proxy.metrics()
    # Two primaries per pod, and each pod served its own two replays: 4 requests each.
    assert (served(a) - before[0], served(b) - before[1]) == (4, 4)
    requests = metric_lines(metrics, "tbg_pod_requests_total")
    assert sorted(requests.values()) == [2.0, 2.0]
    (estimate,) = report["estimates"]
    assert (estimate["upstream"], estimate["model_name"]) == ("fleet", "smollm2")
    assert estimate["trials"] == 4 and estimate["diverged"] == 0
    assert report["accounting"] == {"sampled": 4, "replayed": 4, "failed": 0, "dropped": 0}
