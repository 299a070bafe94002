"""The live canary across engines: the real vLLM CPU engine as the fleet, the embedded reference
(the same SmolLM2 weights in bf16, `serial` mode: batch size 1) as its canary, the real openai
SDK as the client. Half the sampled trials (a fixed stride) are replayed on the reference and
compared with what vLLM answered; the rest are the fleet's own trials.

Asserted: the plumbing (every trial replayed, the canary trials counted in the canary book and
never in the fleet's estimate, the counts adding up). How many answers the switch to the other
engine would move depends on this CPU's kernels and is reported ("integration figures")."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from aiohttp import web
from openai import AsyncOpenAI

from proxy.app import make_app, make_runner
from proxy.config import build_config
from proxy.shadow.tap import ShadowTap
from proxy.shadow.wiring import SHADOW
from tests.integration.common import MODEL, PROMPTS
from tests.integration.conftest import figure, require_model
from tests.integration.vllm_server import VllmProcess

pytestmark = [pytest.mark.vllm, pytest.mark.reference, pytest.mark.slow]

N = 4  # sampled trials: 2 on the canary, 2 on the fleet
MAX_TOKENS = 16


@pytest.fixture(scope="module")
def serial_reference() -> Iterator[Any]:
    require_model()
    from reference.launch import ReferenceProcess

    # one torch thread: vLLM and the proxy share the rest of the machine
    with ReferenceProcess(mode="serial", extra_args=("--threads", "1")) as ref:
        yield ref


@pytest.fixture
async def proxy(
    vllm_server: VllmProcess, serial_reference: Any
) -> AsyncIterator[tuple[ShadowTap, str]]:
    config = build_config(
        {
            "upstreams": [
                {"name": "vllm", "base_url": vllm_server.base_url, "models": [MODEL]},
                {"name": "reference", "base_url": serial_reference.base_url},
            ],
            "shadow": {"enabled": True, "sample_rate": 1.0, "replays": 2, "max_concurrent": 1,
                       "replays_per_minute": 1e6, "tokens_per_minute": 1e9, "logprobs": "yes",
                       "half_life_trials": 1e9,
                       "canary": {MODEL: {"upstream": "reference", "share": 0.5}}},
        },
        {},
    )  # fmt: skip
    app = make_app(config)
    runner = make_runner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield app[SHADOW], f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_reference_canary_of_a_vllm_fleet_is_counted_apart(
    proxy: tuple[ShadowTap, str],
) -> None:
    tap, url = proxy
    async with AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=300) as oai:
        outs = await asyncio.gather(*(
            oai.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": p}], temperature=0,
                max_tokens=MAX_TOKENS,
            )
            for p in PROMPTS[:N]
        ))  # fmt: skip
    assert all(o.choices[0].message.content for o in outs)
    assert await tap.idle(600.0)
    async with httpx.AsyncClient() as http:
        report = (await http.get(url + "/tbg")).json()
    assert report["accounting"] == {"sampled": N, "replayed": N, "failed": 0, "dropped": 0}
    (c,) = report["canary"]
    cross, own, fleet = c["cross"], c["canary_tbg"], c["fleet_tbg"]
    assert cross["trials"] == N // 2 and fleet["trials"] == N // 2, c
    # the fleet's own estimate holds its ordinary trials only, the same as the canary's fleet_tbg
    (est,) = report["estimates"]
    assert est["trials"] == N // 2 and est["pairs"] == fleet["pairs"], (est, fleet)
    assert est["diverged"] == fleet["diverged"]
    assert own["pairs"] == N // 2, own  # the canary's two replays of each trial, with each other
    assert cross["pairs"] == 2 * (N // 2), cross  # each canary replay against its vLLM primary
    assert 0 <= cross["moved"] <= cross["trials"] and 0 <= cross["pairs_moved"] <= cross["pairs"]
    assert 0 <= cross["lower"] <= cross["rate"] <= cross["upper"] <= 1, cross
    first = cross["first_divergence"]["median"]
    figure(
        f"vLLM fleet, reference (serial) canary ({N} prompts, 2 replays, {MAX_TOKENS} tokens): "
        f"moved {cross['moved']}/{cross['trials']} canary trials "
        f"(rate {cross['rate']:.3g} [{cross['lower']:.3g}, {cross['upper']:.3g}]), "
        f"{cross['pairs_moved']}/{cross['pairs']} pairs, first divergence median {first}; "
        f"canary T_bg {own['estimate']:.3g} ({own['diverged']}/{own['pairs']} pairs diverged), "
        f"fleet T_bg {fleet['estimate']:.3g} ({fleet['diverged']}/{fleet['pairs']})"
    )
