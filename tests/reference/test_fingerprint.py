"""The reference upstream's system_fingerprint: where vLLM puts it, stable for one model served one
way, new when the weights' config, the mode or its parameters change; and the proxy reads it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from aiohttp import web

from proxy.app import make_app, make_runner
from proxy.config import build_config
from proxy.shadow.tap import ShadowTap
from proxy.shadow.wiring import SHADOW
from reference.fingerprint import system_fingerprint
from reference.launch import ReferenceProcess
from reference.policy import GreedyPolicy, NoisePolicy, ThermostatPolicy
from reference.scheduler import BatchPolicy

pytestmark = pytest.mark.reference

SHAPE = re.compile(r"tbgref-[0-9A-Za-z.+-]+-serial-[0-9a-f]{8}")
MSG: Any = [{"role": "user", "content": "Name a fruit."}]


def test_what_the_fingerprint_covers(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"hidden_size": 576}')
    (tmp_path / "model.safetensors").write_bytes(b"x" * 10)

    def fp(mode: str = "serial", policy: Any = None, dtype: str = "bfloat16", **kw: Any) -> str:
        policy = GreedyPolicy() if policy is None else policy
        return system_fingerprint(tmp_path, dtype, mode, policy, BatchPolicy(**kw), "2.13.0")

    base = fp()
    assert base == fp()  # same model, served the same way: same fingerprint
    assert re.fullmatch(SHAPE, base)
    others = {
        fp("batched"), fp(dtype="float32"), fp(max_batch=4),
        fp("thermostat", ThermostatPolicy(0.3)), fp("thermostat", ThermostatPolicy(0.5)),
        fp("noise", NoisePolicy(0.1)),
    }  # fmt: skip
    assert base not in others and len(others) == 6
    (tmp_path / "config.json").write_text('{"hidden_size": 960}')  # another checkpoint
    assert fp() != base
    (tmp_path / "config.json").write_text('{"hidden_size": 576}')
    (tmp_path / "model.safetensors").write_bytes(b"x" * 11)  # other weights
    assert fp() != base


@pytest.fixture(scope="module")
def api(serial_server: ReferenceProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=serial_server.base_url, api_key="unused", max_retries=0) as c:
        yield c


def test_sent_where_vllm_sends_it(api: openai.OpenAI) -> None:
    full = api.chat.completions.create(model="smollm2", messages=MSG, max_tokens=4, temperature=0)
    fingerprint = full.system_fingerprint
    assert fingerprint is not None and SHAPE.fullmatch(fingerprint), fingerprint
    legacy = api.completions.create(model="smollm2", prompt="A", max_tokens=3, temperature=0)
    assert legacy.system_fingerprint == fingerprint
    # streaming: the terminal chunk only; with include_usage, the usage chunk
    chunks = list(api.chat.completions.create(
        model="smollm2", messages=MSG, max_tokens=4, temperature=0, stream=True))  # fmt: skip
    stamped = [c for c in chunks if c.system_fingerprint is not None]
    assert len(stamped) == 1 and stamped[0].choices[0].finish_reason is not None
    assert stamped[0].system_fingerprint == fingerprint
    chunks = list(api.chat.completions.create(
        model="smollm2", messages=MSG, max_tokens=4, temperature=0, stream=True,
        stream_options={"include_usage": True}))  # fmt: skip
    stamped = [c for c in chunks if c.system_fingerprint is not None]
    assert len(stamped) == 1 and stamped[0].usage is not None and not stamped[0].choices


async def test_the_proxy_reads_the_reference_fingerprint(serial_server: ReferenceProcess) -> None:
    config = build_config(
        {
            "upstreams": [{"name": "reference", "base_url": serial_server.base_url,
                           "models": ["smollm2"]}],
            "shadow": {"enabled": True, "sample_rate": 1.0, "replays": 1,
                       "replays_per_minute": 1e6, "tokens_per_minute": 1e9},
        },
        {},
    )  # fmt: skip
    app = make_app(config)
    runner = make_runner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused",
                                      max_retries=0, timeout=300) as oai:  # fmt: skip
            seen = set()
            for i in range(10):  # min_trials: the first epoch needs ten fingerprinted trials
                out = await oai.chat.completions.create(
                    model="smollm2", temperature=0, max_tokens=4,
                    messages=[{"role": "user", "content": f"Count to {i}."}],
                )  # fmt: skip
                seen.add(out.system_fingerprint)
        tap: ShadowTap = app[SHADOW]
        assert await tap.idle(300.0)
        async with httpx.AsyncClient() as http:
            (est,) = (await http.get(f"{url}/tbg")).json()["estimates"]
    finally:
        await runner.cleanup()
    (fingerprint,) = seen
    fps = est["fingerprints"]
    assert fps["current"]["fingerprint"] == fingerprint and fps["changes"] == 0
    assert fps["trials_by_fingerprint"] == {fingerprint: 10} and fps["mixed_trials"] == 0
