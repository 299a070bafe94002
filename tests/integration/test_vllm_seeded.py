"""Seeded sampling in front of the real vLLM CPU engine: chat requests at temperature 0.7 with an
integer `seed` are sampled, replayed with the primary's own seed and temperature (a recording
pass-through between the proxy and vLLM shows what was sent) and compared under `seeded` in
`GET /tbg`, apart from the greedy T_bg, which one greedy request fixes beforehand and which the
seeded trials must leave as it was.

Whether vLLM reproduces a seeded answer on this CPU (the exact-match rate) is reported in the
"integration figures" summary, never asserted."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tests.integration.common import MODEL, PROMPTS, chat, settled_report
from tests.integration.conftest import figure
from tests.integration.proxy_server import ProxyThread
from tests.integration.recorder import Recorder, chat_prompt
from tests.integration.vllm_server import VllmProcess

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

TEMPERATURE = 0.7
MAX_TOKENS = 16
SEEDED = PROMPTS[1:5]


def _settled(proxy_url: str, sampled: int, timeout: float) -> dict[str, Any]:
    """`GET /tbg` once `sampled` requests are sampled and all ended (no greedy estimate needed)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=proxy_url, timeout=10) as http:
        while True:
            report: dict[str, Any] = http.get("/tbg").json()
            acc = report["accounting"]
            if (
                acc["sampled"] >= sampled
                and acc["replayed"] + acc["dropped"] + acc["failed"] == (acc["sampled"])
            ):
                return report
            if time.monotonic() > deadline:
                raise AssertionError(f"shadow path not settled after {timeout} s: {acc}")
            time.sleep(0.5)


def test_seeded_chat_is_sampled_replayed_with_its_seed_and_compared_apart(
    vllm_server: VllmProcess,
) -> None:
    shadow = {"sample_rate": 1.0, "replays": 2, "max_concurrent": 1, "half_life_trials": 1e9,
              "replays_per_minute": 1e6, "tokens_per_minute": 1e9}  # fmt: skip
    with (
        Recorder(vllm_server.base_url) as rec,
        ProxyThread(rec.base_url, name="vllm", shadow=shadow) as proxy,
        OpenAI(base_url=proxy.base_url, api_key="x", max_retries=0, timeout=300) as oai,
    ):
        chat(oai, PROMPTS[0], MAX_TOKENS)  # one greedy trial: the T_bg the seeded ones must keep
        before = settled_report(proxy.url, 1, timeout=300)["estimates"]
        for i, prompt in enumerate(SEEDED):
            out = oai.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": prompt}],
                temperature=TEMPERATURE, seed=100 + i, max_tokens=MAX_TOKENS,
            )  # fmt: skip
            assert out.choices[0].message.content
            _settled(proxy.url, 2 + i, timeout=300)  # one at a time: replays run alone
        report = _settled(proxy.url, 1 + len(SEEDED), timeout=300)
    n = len(SEEDED)
    acc = report["accounting"]
    assert acc == {"sampled": n + 1, "replayed": n + 1, "failed": 0, "dropped": 0}, acc
    # the greedy estimate has not moved: seeded trials never enter it
    (est,) = report["estimates"]
    assert [{**est, "age_seconds": 0}] == [{**e, "age_seconds": 0} for e in before]
    assert est["trials"] == 1
    measured = report["measured"]
    assert measured["greedy"]["requests"] == 1 and measured["seeded"]["requests"] == n
    seeded_cmp = measured["compared"]["seeded"]
    assert seeded_cmp["logprobs"] + seeded_cmp["text_only"] == n, seeded_cmp
    (seeded,) = report["seeded"]
    # the model label is the greedy estimate's (an upstream listing no models reports "other")
    assert (seeded["upstream"], seeded["model_name"]) == ("vllm", est["model_name"])
    assert seeded["trials"] == n and n <= seeded["pairs"] <= 3 * n, seeded
    assert 0 <= seeded["diverged_trials"] <= n and 0 <= seeded["diverged"] <= seeded["pairs"]
    assert 0 <= seeded["exact_match_rate"] <= 1
    assert seeded["hazard_lower"] <= seeded["hazard"] <= seeded["hazard_upper"], seeded
    # on the wire: each seeded prompt reached vLLM three times (primary, 2 replays), all 200,
    # every one with the client's seed and temperature
    sent: dict[str, list[dict[str, Any]]] = {}
    for ex in rec.exchanges():
        asked = chat_prompt(ex.request)
        if asked in SEEDED:
            assert ex.status == 200
            sent.setdefault(asked, []).append(ex.request)
    for i, prompt in enumerate(SEEDED):
        assert len(sent[prompt]) == 3, sent.get(prompt)
        assert {(r.get("seed"), r.get("temperature")) for r in sent[prompt]} == {
            (100 + i, TEMPERATURE)
        }
    figure(
        f"vLLM seeded (temperature {TEMPERATURE}, {n} prompts alone, 2 replays, {MAX_TOKENS} "
        f"tokens): exact match {seeded['exact_match_rate']:.3g} of {seeded['pairs']} pairs, "
        f"{seeded['diverged_trials']}/{n} trials diverged, hazard {seeded['hazard']:.3g} "
        f"[{seeded['hazard_lower']:.3g}, {seeded['hazard_upper']:.3g}]; compared with logprobs "
        f"{seeded_cmp['logprobs']}, text only {seeded_cmp['text_only']}"
    )
