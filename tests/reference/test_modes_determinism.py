"""`serial` is deterministic under load; `batched` is not; batching raises throughput."""

from __future__ import annotations

import asyncio

import pytest

from reference.launch import ReferenceProcess
from tests.reference._runs import PROMPTS, Run, alone, diverged, together

pytestmark = pytest.mark.reference

LONG = 32  # tokens per completion for the divergence comparison
SHORT = 12  # tokens per completion for the concurrent serial rerun and the throughput check
LOAD = PROMPTS[:4]  # the concurrent serial rerun and the throughput check (CPU is scarce)


@pytest.fixture(scope="session")
def baseline(serial_server: ReferenceProcess) -> list[Run]:
    """Each prompt decoded alone (batch of one) on the serial server."""
    return asyncio.run(alone(serial_server.base_url, PROMPTS, LONG))


@pytest.fixture(scope="session")
def serial_concurrent(serial_server: ReferenceProcess) -> tuple[list[Run], float]:
    return asyncio.run(together(serial_server.base_url, LOAD, SHORT))


def test_serial_reruns_are_bitwise_identical_under_load(
    baseline: list[Run], serial_concurrent: tuple[list[Run], float]
) -> None:
    runs, _ = serial_concurrent
    for ref, run in zip(baseline[: len(LOAD)], runs, strict=True):
        assert run.completion_tokens == min(SHORT, ref.completion_tokens)
        n = len(run.tokens)
        assert run.tokens == ref.tokens[:n]
        assert run.logprobs == ref.logprobs[:n]  # bitwise: same floats


def test_batched_alone_matches_serial(
    batched_server: ReferenceProcess, baseline: list[Run]
) -> None:
    """A batch of one is the same computation as serial: divergence below is due to batching."""
    (run,) = asyncio.run(alone(batched_server.base_url, PROMPTS[:1], SHORT))
    n = len(run.tokens)
    assert run.tokens == baseline[0].tokens[:n]
    assert run.logprobs == baseline[0].logprobs[:n]


def test_batched_diverges_under_concurrent_load(
    batched_server: ReferenceProcess, baseline: list[Run]
) -> None:
    runs, _ = asyncio.run(together(batched_server.base_url, PROMPTS, LONG))
    count = sum(diverged(a, b) for a, b in zip(baseline, runs, strict=True))
    logprob_changed = sum(
        a.logprobs[:4] != b.logprobs[:4] for a, b in zip(baseline, runs, strict=True)
    )
    print(
        f"\nbatched: {count} of {len(PROMPTS)} completions diverge ({LONG} tokens); "
        f"{logprob_changed} differ in the first 4 logprobs"
    )
    assert logprob_changed > 0
    assert count > 0


def test_batched_throughput_above_serial(
    batched_server: ReferenceProcess, serial_concurrent: tuple[list[Run], float]
) -> None:
    serial_runs, serial_s = serial_concurrent
    batched_runs, batched_s = asyncio.run(together(batched_server.base_url, LOAD, SHORT))
    serial_tps = sum(r.completion_tokens for r in serial_runs) / serial_s
    batched_tps = sum(r.completion_tokens for r in batched_runs) / batched_s
    print(
        f"\nthroughput, {len(LOAD)} concurrent × {SHORT} tokens: "
        f"serial {serial_tps:.1f} tok/s, batched {batched_tps:.1f} tok/s"
    )
    assert batched_tps > serial_tps
