"""The proxy in front of the real vLLM CPU engine (bf16, eager): transparent, streams, and the
batch nondeterminism it is built to measure is really there.

One vLLM server per session (~35-40 s to start); every request is temperature 0. Serial requests are
"alone": nothing else runs on the server at that moment.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from openai import OpenAI

from tests.integration.common import (
    COMPLETION_PROMPTS,
    MODEL,
    PROMPTS,
    chat,
    chat_tokens,
    concurrently,
    first_divergence,
    stream_chat_text,
    strip_volatile,
)
from tests.integration.conftest import figure
from tests.integration.proxy_server import ProxyThread
from tests.integration.vllm_server import VllmProcess
from tests.measure.helpers import load_json, tbg

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

DIVERGENCE_TOKENS = 64


def client(base_url: str) -> OpenAI:
    return OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)


def test_models_through_proxy(vllm_server: VllmProcess, vllm_proxy: ProxyThread) -> None:
    with client(vllm_server.base_url) as direct, client(vllm_proxy.base_url) as proxied:
        assert [m.id for m in direct.models.list()] == [MODEL]

        # vLLM mints a fresh permission id per call; compare the stable fields.
        def stable(page: object) -> list[tuple[object, ...]]:
            keys = ("id", "object", "owned_by", "root", "max_model_len")
            return [tuple(m.get(k) for k in keys) for m in page.model_dump()["data"]]  # type: ignore[attr-defined]

        assert stable(proxied.models.list()) == stable(direct.models.list())


def test_proxy_returns_vllm_answers_unchanged(
    vllm_server: VllmProcess, vllm_proxy: ProxyThread
) -> None:
    """Same request, direct and through the proxy, one after the other (temperature 0, alone).
    Everything but `id` and `created` (new per call) must be equal: text, tokens, logprobs,
    top_logprobs, finish_reason, usage."""
    with client(vllm_server.base_url) as direct, client(vllm_proxy.base_url) as proxied:
        for prompt in PROMPTS[:2]:
            a = chat(direct, prompt, 24, top_logprobs=3)
            b = chat(proxied, prompt, 24, top_logprobs=3)
            assert strip_volatile(b) == strip_volatile(a)
            assert b.usage is not None and b.usage.completion_tokens == 24
        for prompt in COMPLETION_PROMPTS[:2]:
            kw = {"model": MODEL, "prompt": prompt, "temperature": 0, "max_tokens": 24}
            c = direct.completions.create(logprobs=2, **kw)  # type: ignore[call-overload]
            d = proxied.completions.create(logprobs=2, **kw)  # type: ignore[call-overload]
            assert strip_volatile(d) == strip_volatile(c)
            assert d.choices[0].logprobs is not None
            assert len(d.choices[0].logprobs.tokens or []) == 24


def test_streaming_through_proxy(vllm_server: VllmProcess, vllm_proxy: ProxyThread) -> None:
    """A streamed answer through the proxy arrives in many chunks and equals the direct
    non-streamed answer (greedy, alone => bitwise identical)."""
    prompt = PROMPTS[5]
    with client(vllm_server.base_url) as direct, client(vllm_proxy.base_url) as proxied:
        want = chat(direct, prompt, 32).choices[0].message.content
        text, chunks, finish = stream_chat_text(
            proxied, prompt, 32, stream_options={"include_usage": True}
        )
        assert text == want
        assert chunks >= 10
        assert finish == "length"
        kw = {
            "model": MODEL,
            "prompt": COMPLETION_PROMPTS[2],
            "temperature": 0,
            "max_tokens": 16,
        }
        whole = direct.completions.create(**kw).choices[0].text  # type: ignore[call-overload]
        parts = [
            c.choices[0].text
            for c in proxied.completions.create(stream=True, **kw)  # type: ignore[call-overload]
            if c.choices
        ]
        assert "".join(parts) == whole
        assert len(parts) >= 8


def test_alone_vs_concurrent_divergence(vllm_server: VllmProcess, vllm_proxy: ProxyThread) -> None:
    """bf16: the same 8 prompts, each alone (serial) vs all 8 in flight together, through the proxy.
    Some greedy continuations change under concurrency; each diverged prompt rerun alone reproduces
    its first alone answer exactly, so the change comes from batching, not from chance."""
    n = DIVERGENCE_TOKENS
    with client(vllm_proxy.base_url) as proxied:
        t0 = time.monotonic()
        alone = [chat(proxied, p, n) for p in PROMPTS]
        alone_s = time.monotonic() - t0
        t0 = time.monotonic()
        together = asyncio.run(concurrently(vllm_proxy.base_url, PROMPTS, n))
        together_s = time.monotonic() - t0

        positions = {}
        for i, (a, b) in enumerate(zip(alone, together, strict=True)):
            pos = first_divergence(chat_tokens(a), chat_tokens(b))
            if pos is not None:
                positions[i] = pos
        diverged = sorted(positions)
        # Reruns alone are bitwise identical (checked on the diverged prompts, plus one that held).
        recheck = diverged + [i for i in range(len(PROMPTS)) if i not in positions][:1]
        for i in recheck:
            again = chat(proxied, PROMPTS[i], n)
            assert strip_volatile(again) == strip_volatile(alone[i]), f"prompt {i} rerun alone"

    tokens = sum(r.usage.completion_tokens for r in alone)
    figure(
        f"vLLM bf16 alone vs 8 concurrent ({n} tokens, via proxy): {len(diverged)}/8 diverge "
        f"at token positions {[positions[i] for i in diverged]}; "
        f"{len(recheck)} alone reruns identical"
    )
    figure(
        f"vLLM throughput via proxy: alone {tokens / alone_s:.1f} tok/s, "
        f"8 concurrent {sum(r.usage.completion_tokens for r in together) / together_s:.1f} tok/s"
    )
    assert len(diverged) >= 1, "no prompt diverged under concurrency (expected some in bf16)"


def test_sweep_sees_answers_move_with_load(vllm_server: VllmProcess, tmp_path: Path) -> None:
    """`tbg sweep` through the real CLI against the session's vLLM: alone (load 1) vLLM is
    reproducible; at load 8 requests share bf16 batches and answers move away from the load-1
    ones (25 % of 16 prompts at 16 tokens in docs/measure.md; 6/8 diverge at 64 tokens above).
    32 tokens and 12 prompts: a miss needs all 12 to agree."""
    out = tmp_path / "sweep"
    cp = tbg(
        "sweep", "--base-url", vllm_server.base_url, "--model", MODEL, "--levels", "1,8",
        "--prompt-limit", "12", "--runs", "2", "--max-tokens", "32", "--out", str(out),
        "--time-limit", "400", timeout=460,
    )  # fmt: skip
    assert cp.returncode == 0, cp.stderr
    one, eight = load_json(out / "sweep.json")["levels"]
    assert one["diverged_pairs"] == 0, one
    moved = eight["diverged_pairs"] > 0 or eight["differs_from_level1"] > 0
    assert moved, eight
    figure(
        f"vLLM sweep (12 prompts x 2 runs x 32 tokens): load 8 diverged pairs "
        f"{eight['diverged_pairs']}/{eight['pairs']}, differs from load 1 "
        f"{eight['differs_from_level1']:.0%}; {one['throughput_tps']:.1f} -> "
        f"{eight['throughput_tps']:.1f} tok/s"
    )
