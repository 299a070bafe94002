"""Legacy completions (`/v1/completions`) through the proxy in front of the real vLLM CPU engine,
whole and streamed, one at a time: every primary is sampled, replayed and compared under the
`completions` route. Whether a replay diverged depends on this machine's vLLM and is reported
("integration figures"), never asserted."""

from __future__ import annotations

import pytest
from openai import OpenAI

from tests.integration.common import COMPLETION_PROMPTS, MODEL, settled_report
from tests.integration.conftest import figure
from tests.integration.proxy_server import ProxyThread
from tests.integration.vllm_server import VllmProcess

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

MAX_TOKENS = 16


def test_completions_are_sampled_and_compared(vllm_server: VllmProcess) -> None:
    shadow = {"sample_rate": 1.0, "replays": 2, "max_concurrent": 1, "half_life_trials": 1e9,
              "replays_per_minute": 1e6, "tokens_per_minute": 1e9}  # fmt: skip
    kw = {"model": MODEL, "temperature": 0, "max_tokens": MAX_TOKENS}
    with (
        ProxyThread(vllm_server.base_url, name="vllm", shadow=shadow) as proxy,
        OpenAI(base_url=proxy.base_url, api_key="x", max_retries=0, timeout=300) as oai,
    ):
        for i, prompt in enumerate(COMPLETION_PROMPTS):
            out = oai.completions.create(prompt=prompt, **kw)  # type: ignore[call-overload]
            assert out.choices[0].text
            settled_report(proxy.url, i + 1, timeout=300)  # one at a time: replays run alone
        parts = [
            c.choices[0].text
            for c in oai.completions.create(prompt=COMPLETION_PROMPTS[0], stream=True, **kw)  # type: ignore[call-overload]
            if c.choices
        ]
        assert "".join(parts)
        n = len(COMPLETION_PROMPTS) + 1
        report = settled_report(proxy.url, n, timeout=300)
    assert report["accounting"] == {"sampled": n, "replayed": n, "failed": 0, "dropped": 0}
    (est,) = report["estimates"]
    assert est["trials"] == n and n <= est["pairs"] <= 3 * n, est
    assert 0 <= est["diverged"] <= est["pairs"]
    classes = {(c["route"], c["streaming"]): c for c in est["by_class"]}
    assert set(classes) == {("completions", "whole"), ("completions", "stream")}, classes
    assert sum(c["pairs"] for c in classes.values()) == est["pairs"]
    assert sum(c["diverged"] for c in classes.values()) == est["diverged"]
    compared = report["measured"]["compared"]["greedy"]
    assert compared["logprobs"] + compared["text_only"] == n, compared
    figure(
        f"vLLM /v1/completions via proxy ({n - 1} whole + 1 streamed, alone, 2 replays, "
        f"{MAX_TOKENS} tokens): {n} sampled, {n} replayed, {est['pairs']} pairs compared "
        f"({compared['logprobs']} trials with logprobs, {compared['text_only']} text only), "
        f"{est['diverged']} diverged"
    )
