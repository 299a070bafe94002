"""The Responses API (`/v1/responses`) through the proxy in front of the real vLLM CPU engine, with
a recording pass-through between the two: greedy primaries, whole and streamed, are sampled,
augmented with output-text logprobs once their shape is known, replayed and compared, and the
client receives the bytes vLLM sends to an unaugmented request (ids and times aside).

Requests run one at a time ("alone"). Whether a replay diverged from its primary is reported in
the "integration figures" summary and checked against the recorded answers, never assumed."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from openai import OpenAI

from estimator.builders import run_from_responses_response
from tests.integration.common import MODEL, PROMPTS, settled_report
from tests.integration.conftest import figure
from tests.integration.proxy_server import ProxyThread
from tests.integration.recorder import Recorder
from tests.integration.vllm_server import VllmProcess

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

LOGPROBS = "message.output_text.logprobs"


def _normalise(data: bytes) -> bytes:
    data = re.sub(rb'"(resp|msg)_[0-9a-f]+"', b'"ID"', data)
    return re.sub(rb'"created_at":\d+', b'"created_at":0', data)


def _stable(dump: Any) -> Any:
    if isinstance(dump, dict):
        return {k: _stable(v) for k, v in dump.items()
                if k not in ("id", "item_id", "created_at")}  # fmt: skip
    if isinstance(dump, list):
        return [_stable(v) for v in dump]
    return dump


def test_responses_through_the_proxy_are_measured_and_unchanged(vllm_server: VllmProcess) -> None:
    shadow = {"sample_rate": 1.0, "replays": 1, "max_concurrent": 1, "half_life_trials": 1e9}
    body = {"model": MODEL, "input": PROMPTS[0], "temperature": 0, "max_output_tokens": 24}
    with (
        Recorder(vllm_server.base_url) as rec,
        ProxyThread(rec.base_url, name="vllm", shadow=shadow) as proxy,
        httpx.Client(timeout=300) as http,
    ):
        sampled = 0
        for stream in (False, True):
            sent = {**body, "stream": stream}
            for _ in range(2):  # the first is plain (it teaches), the second augmented
                proxied = http.post(f"{proxy.base_url}/responses", json=sent).content
                sampled += 1
                settled_report(proxy.url, sampled, timeout=300)
                direct = http.post(f"{vllm_server.base_url}/responses", json=sent).content
                assert _normalise(proxied) == _normalise(direct)
                assert b'"logprobs":[{' not in proxied
        with (
            OpenAI(base_url=proxy.base_url, api_key="x", max_retries=0, timeout=300) as via,
            OpenAI(base_url=vllm_server.base_url, api_key="x", max_retries=0, timeout=300) as to,
        ):
            kw: dict[str, Any] = {**body, "instructions": "Be brief."}
            a = via.responses.create(**kw)
            sampled += 1
            settled_report(proxy.url, sampled, timeout=300)  # its replay no longer runs beside
            b = to.responses.create(**kw)
            assert _stable(a.model_dump()) == _stable(b.model_dump()) and a.output_text
        report = settled_report(proxy.url, sampled, timeout=300)
    acc = report["accounting"]
    assert acc["sampled"] == acc["replayed"] == sampled == 5, acc
    est = report["estimates"][0]
    assert est["pairs"] == sampled, est
    exchanges = [e for e in rec.exchanges() if e.response is not None and "input" in e.request]
    replays = [e for e in exchanges if e.request.get("store") is False]
    assert len(replays) == sampled  # every replay: whole, not stored, logprobs asked, capped
    for e in replays:
        assert e.request["stream"] is False and LOGPROBS in e.request["include"]
        assert e.request["max_output_tokens"] <= 24
    augmented = [
        e for e in exchanges if e.request.get("store") is None and e.request.get("include")
    ]
    assert len(augmented) == 2, [e.request for e in exchanges]  # the second whole, the SDK's
    for e in augmented:
        assert e.response is not None and e.response["output"][0]["content"][0]["logprobs"]
    # The proxy's divergence count equals the one read from the answers vLLM gave (each whole
    # augmented primary against its replay; the other trials checked through the proxy only).
    forks = 0
    for e in augmented:
        assert e.response is not None
        primary = run_from_responses_response(e.response)
        replay = next(
            run_from_responses_response(r.response)
            for r in replays
            if r.response is not None and r.request["input"] == e.request["input"]
            and r.request.get("instructions") == e.request.get("instructions")
        )  # fmt: skip
        forks += primary.tokens != replay.tokens[: len(primary.tokens)]
    figure(
        f"vLLM /v1/responses via proxy: {acc['sampled']} sampled, {acc['replayed']} replayed, "
        f"{est['pairs']} pairs compared, {est['diverged']} diverged "
        f"(augmented whole primaries diverged from their replays: {forks}/{len(augmented)})"
    )
    assert est["diverged"] >= forks
