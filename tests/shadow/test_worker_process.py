"""The shadow worker process (TBG_SHADOW_WORKER=process): replays and comparisons run in a child
process, and everything the shadow path promises still holds — the same comparisons and exports as
in-process, exact accounting through overload, shutdown and the child's death, replay auth, logprobs
detection, and primaries that never wait for it. Several scenarios are the in-process tests' own,
run again with the worker process (niceness 0 there, so their "replays run meanwhile" holds on a
busy CI box)."""

from __future__ import annotations

import os
import signal
import statistics
import sys
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from proxy.config import ConfigError, build_config
from proxy.shadow.executor import ProcessLink
from tests.reliability import test_shadow_accounting as accounting
from tests.reliability import test_shadow_faults as faults
from tests.reliability.test_client_disconnect import until
from tests.shadow import test_shadow_proxy as inline
from tests.shadow.conftest import FakeLLM, Stack

CHAT: dict[str, Any] = inline.CHAT


@pytest.fixture
def process_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TBG_SHADOW_WORKER", "process")
    monkeypatch.setenv("TBG_SHADOW_WORKER_NICE", "0")


def worker(stack: Stack) -> ProcessLink:
    link = stack.tap.executor.link
    assert isinstance(link, ProcessLink)
    return link


def nice(pid: str) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def metrics(stack: Stack) -> str:
    async with httpx.AsyncClient() as http:
        return (await http.get(stack.proxy_url.removesuffix("/v1") + "/metrics")).text


@pytest.mark.usefixtures("process_worker")
async def test_replays_are_compared_and_exported_by_the_worker(make_stack: Any) -> None:
    await inline.test_replays_are_compared_and_exported(make_stack)


@pytest.mark.usefixtures("process_worker")
async def test_the_request_class_crosses_to_the_worker_and_back(make_stack: Any) -> None:
    # each Job's class is pickled to the worker process and comes back in its Compared outcome
    await inline.test_estimates_by_request_class(make_stack)


@pytest.mark.usefixtures("process_worker")
async def test_worker_accounting_with_drops_and_failures(make_stack: Any) -> None:
    await inline.test_accounting_is_exact_with_drops_and_failures(make_stack)


@pytest.mark.usefixtures("process_worker")
async def test_worker_detects_an_upstream_without_logprobs(make_stack: Any) -> None:
    await inline.test_upstream_without_logprobs_is_detected_and_never_fails_a_client(make_stack)


@pytest.mark.usefixtures("process_worker")
async def test_worker_uses_the_dedicated_replay_key_and_load_from_vllm(make_stack: Any) -> None:
    await inline.test_dedicated_replay_key(make_stack)
    await inline.test_load_from_vllm_metrics(make_stack)


@pytest.mark.usefixtures("process_worker")
async def test_worker_accounting_through_overload_and_shutdown() -> None:
    await accounting.test_accounting_holds_through_overload_and_shutdown()


@pytest.mark.usefixtures("process_worker")
@pytest.mark.parametrize("mode", ["fail_every_second", "ok"])
async def test_slow_or_failing_replays_in_the_worker_never_touch_the_primary(mode: str) -> None:
    # test_shadow_faults' scenario, except that the primaries are timed only once the worker's
    # replays are under way: the worker is another process, scheduled on its own.
    fake = faults.ShadowUpstream(mode=mode)
    async with faults._stacks(fake) as (direct, off, on, tap, _), aiohttp.ClientSession() as http:
        await faults._primary(http, off)  # warm-up (pools, lazy imports); not sampled
        await faults._primary(http, on)  # sampled: its replays start in the worker
        await until(lambda: fake.replays > 0, within=30.0)
        off_s: list[float] = []
        on_s: list[float] = []
        for _ in range(faults.N):
            expected, _ = await faults._primary(http, direct)
            via_off, t_off = await faults._primary(http, off)
            via_on, t_on = await faults._primary(http, on)
            assert via_on == via_off == expected
            off_s.append(t_off)
            on_s.append(t_on)
        # A primary that waited for even one replay would take ≥ REPLAY_DELAY.
        assert statistics.median(on_s) < statistics.median(off_s) + faults.BUDGET, (on_s, off_s)
        assert max(on_s) < faults.REPLAY_DELAY, on_s
        assert await tap.idle((faults.N + 1) * 2 * faults.REPLAY_DELAY + 10)
    totals = tap.view().totals()
    assert totals["sampled"] == faults.N + 1 and totals["dropped"] == 0, totals
    assert totals["sampled"] == totals["replayed"] + totals["failed"], totals
    if mode == "ok":
        assert fake.replay_errors == 0 and totals["replayed"] == faults.N + 1
    else:
        # Half the replays fail; while support is still unknown a failed one is retried plain.
        n = faults.N + 1
        assert n <= fake.replay_errors <= n + faults.MAX_CONCURRENT, fake.replay_errors
        assert totals["replayed"] >= n // 2


async def test_the_same_estimates_in_process_and_in_the_worker(
    make_stack: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    reports = []
    for mode in ("inline", "process"):
        monkeypatch.setenv("TBG_SHADOW_WORKER", mode)
        stack: Stack = await make_stack(FakeLLM(flip_replays={1, 4, 5}))
        async with inline.client(stack) as oai:
            for _ in range(4):
                await oai.chat.completions.create(**CHAT)
                report = await inline.settle(stack)  # one trial at a time: the same load buckets
        reports.append(report)
    fields = ("method", "estimate", "lower", "upper", "pairs", "diverged", "tokens_at_risk",
              "by_load", "by_class")  # fmt: skip
    same = [{f: r["estimates"][0][f] for f in fields} for r in reports]
    assert same[0] == same[1]
    assert reports[0]["accounting"] == reports[1]["accounting"]
    assert same[1]["diverged"] > 0


@pytest.mark.usefixtures("process_worker")
async def test_a_dead_worker_is_counted_and_the_primaries_go_on(make_stack: Any) -> None:
    stack: Stack = await make_stack(FakeLLM(replay_delay=5.0), shadow={"max_concurrent": 1})
    async with inline.client(stack) as oai:
        for _ in range(3):  # one trial in progress (its replay waits 5 s), two queued
            await oai.chat.completions.create(**CHAT)
        pool = worker(stack)
        await until(lambda: stack.fake.replays > 0)
        assert pool.pid is not None
        os.kill(pool.pid, signal.SIGKILL)
        assert await stack.tap.idle(10.0)  # what the child held is accounted for at once
        totals = stack.tap.view().totals()
        assert totals == {"sampled": 3, "replayed": 0, "failed": 3, "dropped": 0}, totals
        out = await oai.chat.completions.create(**CHAT)  # primaries are served as before
        assert out.choices[0].message.content == "Hello, world A!"
        assert await stack.tap.idle(10.0)
    text = await metrics(stack)
    assert 'tbg_internal_errors_total{where="shadow"} 1.0' in text
    totals = stack.tap.view().totals()
    assert totals["sampled"] == 4 and stack.tap.view().drops_by_reason() == {"queue_full": 1}
    assert totals["sampled"] == totals["replayed"] + totals["dropped"] + totals["failed"]


async def test_worker_runs_niced_and_stops_with_the_proxy(
    make_stack: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TBG_SHADOW_WORKER", "process")
    monkeypatch.delenv("TBG_SHADOW_WORKER_NICE", raising=False)  # the default: 10
    stack: Stack = await make_stack(FakeLLM())
    pid = worker(stack).pid
    assert pid is not None
    assert nice(str(pid)) == min(19, nice("self") + 10)
    async with inline.client(stack) as oai:
        await oai.chat.completions.create(**CHAT)
    report = await inline.settle(stack)
    assert report["accounting"]["replayed"] == 1
    await stack.tap.stop()
    assert not running(pid)


@pytest.mark.usefixtures("process_worker")
async def test_a_worker_that_cannot_start_stops_the_proxy_start(
    make_stack: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", "/bin/false")
    with pytest.raises(RuntimeError, match="shadow worker process did not start"):
        await make_stack(FakeLLM())


@pytest.mark.parametrize(("var", "value", "field"),
                         [("TBG_SHADOW_WORKER", "thread", "shadow.worker"),
                          ("TBG_SHADOW_WORKER_NICE", "-5", "shadow.worker_nice")])  # fmt: skip
async def test_bad_worker_settings_stop_the_start(
    make_stack: Any, monkeypatch: pytest.MonkeyPatch, var: str, value: str, field: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=rf"^{field}: "):
        await make_stack(FakeLLM())


def test_worker_settings_come_from_the_file_or_the_environment_and_do_not_turn_replay_on() -> None:
    up = {"name": "u", "base_url": "http://127.0.0.1:9/v1"}
    config = build_config(
        {"upstreams": [up], "shadow": {"worker": "process", "worker_nice": 3}}, {}
    )
    shadow = config.shadow_config
    assert (shadow.enabled, shadow.worker, shadow.worker_nice) == (True, "process", 3)
    env = {"TBG_SHADOW_WORKER": "process", "TBG_SHADOW_WORKER_NICE": "0"}
    shadow = build_config({"upstreams": [up]}, env).shadow_config
    assert (shadow.enabled, shadow.worker, shadow.worker_nice) == (False, "process", 0)
