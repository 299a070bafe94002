"""The Responses API end to end: the real proxy (sample_rate 1.0) in front of the real reference
LLM, driven by the real openai SDK and by raw HTTP. Greedy /v1/responses primaries, whole and
streamed, are sampled, replayed and compared; once replays proved logprobs support and a plain
answer showed its shape, primaries are augmented, and the client still receives exactly the bytes
(and SDK objects) the upstream sends to an unaugmented request. The serial reference is
deterministic: nothing diverges."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from reference.launch import ReferenceProcess
from tests.shadow.test_e2e_reference import ONE_THREAD, Proxy, start_proxy

pytestmark = [pytest.mark.reference, pytest.mark.slow]

PROMPT = "Explain what a hash table is."
LOGPROBS = ["message.output_text.logprobs"]


@pytest.fixture(scope="module")
def serial_ref() -> Any:
    with ReferenceProcess(mode="serial", extra_args=ONE_THREAD) as ref:
        yield ref


@pytest.fixture
async def proxy(serial_ref: ReferenceProcess) -> AsyncIterator[Proxy]:
    made, runner = await start_proxy(serial_ref.base_url, replays=2)
    try:
        yield made
    finally:
        for oai in made.clients:
            await oai.close()
        await runner.cleanup()


def _normalise(data: bytes) -> bytes:
    """Ids and creation times differ per call by design; everything else must be equal."""
    data = re.sub(rb'"(resp|msg)_[0-9a-f]+"', b'"ID"', data)
    return re.sub(rb'"created_at":\d+', b'"created_at":0', data)


def _stable(dump: Any) -> Any:
    """An SDK object's dump without its per-call ids and times."""
    if isinstance(dump, dict):
        return {k: _stable(v) for k, v in dump.items()
                if k not in ("id", "item_id", "created_at")}  # fmt: skip
    if isinstance(dump, list):
        return [_stable(v) for v in dump]
    return dump


async def _post(http: httpx.AsyncClient, url: str, body: dict[str, Any]) -> bytes:
    resp = await http.post(url + "/responses", json=body)
    assert resp.status_code == 200, resp.text
    return resp.content


async def test_responses_are_measured_and_reach_the_client_unchanged(
    serial_ref: ReferenceProcess, proxy: Proxy
) -> None:
    body = {"model": "smollm2", "input": PROMPT, "temperature": 0, "max_output_tokens": 12}
    via = proxy.url + "/v1"
    async with httpx.AsyncClient(timeout=300) as http:
        for stream in (False, True):
            sent = {**body, "stream": stream}
            first = await _post(http, via, sent)  # plain: its replays prove logprobs support
            await proxy.report()
            proxied = await _post(http, via, sent)  # augmented, then stripped
            direct = await _post(http, serial_ref.base_url, sent)
            assert _normalise(first) == _normalise(proxied) == _normalise(direct)
            assert b'"logprobs":[{' not in proxied and b'"top_logprobs":null' in proxied
        alike = (await proxy.report())["estimates"][0]
        assert alike["method"] == "likelihood" and alike["p_identical"] == 1.0  # bit-identical
        asked = {**body, "include": LOGPROBS, "top_logprobs": 2}  # the client's own: untouched
        proxied = await _post(http, via, asked)
        assert _normalise(proxied) == _normalise(await _post(http, serial_ref.base_url, asked))
        assert b'"logprobs":[{' in proxied
    report = await proxy.report()
    accounting = report["accounting"]
    assert accounting["sampled"] == 5 == accounting["replayed"], accounting
    est = report["estimates"][0]
    # The first whole and the first streamed primary were plain (text-only): their two replays
    # are compared (1 pair); every other trial compares primary and replays by tokens (3 pairs).
    assert est["pairs"] == 1 + 3 + 1 + 3 + 3, est
    assert est["diverged"] == 0 and est["estimate"] == 0.0
    classes = {(c["route"], c["kind"], c["streaming"]): c["pairs"] for c in est["by_class"]}
    assert classes == {("responses", "plain", "whole"): 7, ("responses", "plain", "stream"): 4}


async def test_the_openai_sdk_gets_the_same_objects_through_the_proxy(
    serial_ref: ReferenceProcess, proxy: Proxy
) -> None:
    from openai import AsyncOpenAI

    direct = AsyncOpenAI(base_url=serial_ref.base_url, api_key="unused", max_retries=0)
    proxied = proxy.client()
    kw: dict[str, Any] = {
        "model": "smollm2", "input": [{"role": "user", "content": PROMPT}],
        "instructions": "Be brief.", "temperature": 0, "max_output_tokens": 10,
    }  # fmt: skip
    try:
        for _ in range(2):  # the second of each is augmented
            a = await proxied.responses.create(**kw)
            b = await direct.responses.create(**kw)
            assert _stable(a.model_dump()) == _stable(b.model_dump())
            assert a.output[0].content[0].logprobs is None  # type: ignore[union-attr]
            await proxy.report()
        for _ in range(2):
            events = [e async for e in await proxied.responses.create(stream=True, **kw)]
            again = [e async for e in await direct.responses.create(stream=True, **kw)]
            assert [_stable(e.model_dump()) for e in events] == [
                _stable(e.model_dump()) for e in again
            ]
            await proxy.report()
        async with proxied.responses.stream(**kw) as stream:
            async for _ in stream:
                pass
            final = await stream.get_final_response()
        assert final.output_text == b.output_text
    finally:
        await direct.close()
    report = await proxy.report()
    assert report["accounting"]["sampled"] == 5 == report["accounting"]["replayed"]
    assert report["estimates"][0]["diverged"] == 0


async def test_ineligible_responses_are_forwarded_untouched(proxy: Proxy) -> None:
    body = {"model": "smollm2", "input": "Hi", "temperature": 0.9, "max_output_tokens": 3}
    async with httpx.AsyncClient(timeout=300) as http:
        await _post(http, proxy.url + "/v1", body)  # sampled at T > 0: not greedy
        await _post(http, proxy.url + "/v1", {k: v for k, v in body.items() if k != "temperature"})
    report = await proxy.report()
    assert report["accounting"]["sampled"] == 0 and report["eligible"] == 0
