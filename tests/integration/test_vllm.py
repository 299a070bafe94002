"""The proxy in front of the real vLLM CPU engine (bf16, eager): transparent, streams, and what it
measures agrees with the answers vLLM really gave, whether or not this machine's vLLM diverges
under load (that behaviour is reported in the "integration figures" summary, never asserted).

One vLLM server per session (~35-40 s to start); every request is temperature 0. Serial requests are
"alone": nothing else runs on the server at that moment.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
from collections import defaultdict
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
    settled_report,
    stream_chat_text,
    strip_volatile,
)
from tests.integration.conftest import figure
from tests.integration.proxy_server import ProxyThread
from tests.integration.recorder import Recorder
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
    Whether an answer changes under concurrency is what this machine's vLLM does, and it is
    reported, not asserted (on some CPUs vLLM-cpu is batch-invariant for these prompts). What is
    asserted is the proxy's part: every answer arrives whole, the same length alone and together."""
    n = DIVERGENCE_TOKENS
    with client(vllm_proxy.base_url) as proxied:
        t0 = time.monotonic()
        alone = [chat(proxied, p, n) for p in PROMPTS]
        alone_s = time.monotonic() - t0
        t0 = time.monotonic()
        together = asyncio.run(concurrently(vllm_proxy.base_url, PROMPTS, n))
        together_s = time.monotonic() - t0
        again = chat(proxied, PROMPTS[0], n)

    positions = {}
    for i, (a, b) in enumerate(zip(alone, together, strict=True)):
        assert a.usage.completion_tokens == b.usage.completion_tokens == n, i
        assert len(chat_tokens(a)) == len(chat_tokens(b)) == n, i
        pos = first_divergence(chat_tokens(a), chat_tokens(b))
        if pos is not None:
            positions[i] = pos
    diverged = sorted(positions)
    rerun_same = strip_volatile(again) == strip_volatile(alone[0])
    tokens = sum(r.usage.completion_tokens for r in alone)
    figure(
        f"vLLM bf16 alone vs 8 concurrent ({n} tokens, via proxy): {len(diverged)}/8 diverge "
        f"at token positions {[positions[i] for i in diverged]}; a rerun alone is "
        f"{'bitwise identical' if rerun_same else 'DIFFERENT'}"
    )
    figure(
        f"vLLM throughput via proxy: alone {tokens / alone_s:.1f} tok/s, "
        f"8 concurrent {sum(r.usage.completion_tokens for r in together) / together_s:.1f} tok/s"
    )


def test_live_estimate_agrees_with_the_answers_vllm_gave(vllm_server: VllmProcess) -> None:
    """Shadow replay in front of real vLLM, with a recording pass-through between the two: the
    pairs the proxy compared are compared again here, directly from the answers vLLM sent. The
    proxy's divergence count must equal that direct count; none diverged ⇒ estimate 0 with a finite
    upper bound, some ⇒ an estimate above 0. This holds whether or not this machine's vLLM diverges
    under load; how often it does is reported."""
    n = 48
    # Primaries run 8 at a time, replays one at a time: where vLLM's answers follow the batch,
    # replays meet another batch than their primaries did.
    shadow = {"sample_rate": 1.0, "replays": 1, "max_concurrent": 1, "half_life_trials": 1e9}
    with (
        Recorder(vllm_server.base_url) as rec,
        ProxyThread(rec.base_url, name="vllm", shadow=shadow) as proxy,
    ):
        answers = asyncio.run(concurrently(proxy.base_url, PROMPTS, n, top_logprobs=5))
        report = settled_report(proxy.url, len(PROMPTS), timeout=300)
    est = report["estimates"][0]
    runs = rec.answers()
    paired = {p: r for p, r in runs.items() if len(r) == 2}
    # The client got one of the answers vLLM gave to its request (the primary, relayed as sent).
    for prompt, answer in zip(PROMPTS, answers, strict=True):
        assert tuple(chat_tokens(answer)) in {tuple(t for t, _ in r) for r in runs[prompt]}
    assert len(paired) == report["accounting"]["replayed"] == len(PROMPTS), report["accounting"]
    direct = {p: first_divergence(a, b) for p, (a, b) in paired.items()}
    diverged = sorted(pos for pos in direct.values() if pos is not None)
    assert est["pairs"] == len(paired), est
    assert est["diverged"] == len(diverged), (est, diverged)
    if not diverged:
        assert est["estimate"] == 0.0 and est["lower"] == 0.0, est
        assert est["upper"] is not None and 0 < est["upper"] < math.inf, est
    else:
        assert est["estimate"] > 0 and est["upper"] >= est["estimate"], est
    figure(
        f"vLLM live shadow (8 concurrent primaries, 1 replay each alone, {n} tokens): "
        f"{len(diverged)}/{len(paired)} pairs diverged at {diverged}; proxy estimate "
        f"{est['estimate']:.3g} [{est['lower']:.3g}, {est['upper']:.3g}] ({est['method']})"
    )


def test_sweep_agrees_with_its_own_runs(vllm_server: VllmProcess, tmp_path: Path) -> None:
    """`tbg sweep` through the real CLI against the session's vLLM. Its counts are recomputed here
    from the runs it stored (the very answers it compared): pairs, diverged pairs and the share
    of answers that moved from load 1 must match at every level, and a level without divergence
    has T_bg 0 with a finite upper bound. Whether answers move with load is reported."""
    out = tmp_path / "sweep"
    cp = tbg(
        "sweep", "--base-url", vllm_server.base_url, "--model", MODEL, "--levels", "1,8",
        "--prompt-limit", "12", "--runs", "2", "--max-tokens", "32", "--out", str(out),
        "--time-limit", "400", timeout=460,
    )  # fmt: skip
    assert cp.returncode == 0, cp.stderr
    levels = load_json(out / "sweep.json")["levels"]
    runs: dict[tuple[int, str], list[tuple[int, tuple[str, ...]]]] = defaultdict(list)
    for line in (out / "runs.jsonl").read_text("utf-8").splitlines():
        rec = json.loads(line)
        key = rec["key"]
        runs[(key["level"], key["prompt"])].append((key["run"], tuple(rec["tokens"])))
    for row in levels:
        groups = [sorted(r) for (lvl, _), r in runs.items() if lvl == row["load"]]
        pairs = diverged = 0
        for group in groups:
            for (_, a), (_, b) in itertools.combinations(group, 2):
                pairs += 1
                diverged += first_divergence(a, b) is not None
        assert (row["pairs"], row["diverged_pairs"]) == (pairs, diverged), row
        first = {p: sorted(r)[0][1] for (lvl, p), r in runs.items() if lvl == levels[0]["load"]}
        mine = [(p, t) for (lvl, p), r in runs.items() if lvl == row["load"] for _, t in r]
        moved = sum(t != first[p] for p, t in mine if p in first)
        if row["load"] == levels[0]["load"]:
            assert row["differs_from_level1"] is None, row  # the base level itself
        else:
            assert row["differs_from_level1"] == pytest.approx(moved / len(mine)), row
        if diverged == 0:
            assert row["t_bg"] == 0.0 and row["t_lower"] == 0.0, row
            assert 0 < row["t_upper"] < math.inf, row
        else:
            assert row["t_bg"] > 0 and row["t_upper"] >= row["t_bg"], row
    one, eight = levels
    figure(
        f"vLLM sweep (12 prompts x 2 runs x 32 tokens): diverged pairs load 1 "
        f"{one['diverged_pairs']}/{one['pairs']}, load 8 {eight['diverged_pairs']}/{eight['pairs']}, "
        f"load 8 differs from load 1 {eight['differs_from_level1']:.0%}; "
        f"{one['throughput_tps']:.1f} -> {eight['throughput_tps']:.1f} tok/s"
    )
