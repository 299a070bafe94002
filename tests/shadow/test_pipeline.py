"""The shadow pipeline's stages on their own: typed messages that cross the process boundary intact,
the Executor's accounting of each Job until its terminal outcome (idle without polling, the child's
death), and an Aggregator that republishes on a change, not on every eligible request."""

from __future__ import annotations

import asyncio
import dataclasses
import pickle
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from estimator.model import Run, Trial, TrialContext
from estimator.online import OnlineConfig, OnlineEstimator
from proxy.config import build_config
from proxy.shadow import messages
from proxy.shadow.aggregator import Aggregator
from proxy.shadow.channel import frame
from proxy.shadow.classes import RequestClass
from proxy.shadow.config import ShadowConfig
from proxy.shadow.executor import Executor, OnMessage
from proxy.shadow.load import LoadTracker
from proxy.shadow.messages import (
    Compared,
    Dropped,
    Failed,
    Init,
    Job,
    LogprobsLearned,
    Ready,
    ReplayDone,
    ReplayStarted,
    Stop,
    Stopped,
    ToWorker,
)
from proxy.shadow.trial import compare_trial
from proxy.shadow.view import ShadowView
from proxy.tap import Exchange, RequestInfo, TapPlan
from tests.reliability.test_client_disconnect import until

KEY = ("u", "m")


def unframe(data: bytes) -> Any:
    return pickle.loads(data[4:])


def test_every_message_is_a_frozen_dataclass() -> None:
    kinds = [getattr(messages, n) for n in dir(messages) if not n.startswith("_")]
    classes = [k for k in kinds if isinstance(k, type) and k.__module__ == messages.__name__]
    assert len(classes) >= 12
    for cls in classes:
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, cls  # type: ignore[attr-defined]


def test_a_job_keeps_only_what_a_replay_needs_and_crosses_the_boundary_intact() -> None:
    raw = b'{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}]}'
    headers = {"Authorization": "Bearer sk", "Traceparent": "00-ab-cd-01", "Cookie": "no",
               "X-TBG-Replay": "always"}  # fmt: skip
    request = RequestInfo("chat", "u", "m", {"model": "m"}, raw, headers, stream=True)
    events = ({"choices": [{"delta": {"content": "A"}}]},)
    exchange = Exchange(request, TapPlan(), 200, None, events, True, 1.0, 2.0)
    job = Job.of(7, exchange, KEY, 3)
    assert dict(job.headers) == {"Authorization": "Bearer sk", "traceparent": "00-ab-cd-01"}
    again = unframe(frame(job))
    assert again == job
    replayed = again.request()
    assert replayed.body["messages"][0]["content"] == "hi" and replayed.raw_body == raw
    assert (replayed.upstream, replayed.model_name, replayed.stream) == ("u", "m", True)


def test_a_job_classifies_its_request_and_the_comparison_brings_the_class_back() -> None:
    body = {"model": "m", "response_format": {"type": "json_object"}}
    request = RequestInfo("chat", "u", "m", body, orjson.dumps(body), {}, stream=False)
    exchange = Exchange(request, TapPlan(), 200, b"{}", (), True, 1.0, 2.0)
    job = Job.of(3, exchange, KEY, 1)
    assert job.request_class == RequestClass("chat", "json", "whole")
    assert unframe(frame(job)).request_class == job.request_class
    comparer = OnlineEstimator(OnlineConfig())
    runs = (Run(("a", "b"), None, None, "ab", "stop"), Run(("a", "c"), None, None, "ac", "stop"))
    compared = compare_trial(comparer.compare, ShadowConfig(enabled=True), b"k" * 16, job.id,
                             job.request(), runs, job.request_class)  # fmt: skip
    again = unframe(frame(compared))
    assert (again.job, again.key, again.comparison.pairs) == (3, KEY, 1)
    assert again.request_class == compared.request_class == job.request_class


def test_the_aggregator_folds_each_class_apart_and_the_overall_estimate_is_unchanged() -> None:
    agg, plain = Aggregator(ShadowConfig(enabled=True)), Aggregator(ShadowConfig(enabled=True))
    comparer = OnlineEstimator(OnlineConfig())
    same = (Run(("a", "b"), None, None, "ab", "stop"), Run(("a", "b"), None, None, "ab", "stop"))
    split = (Run(("a", "b"), None, None, "ab", "stop"), Run(("a", "c"), None, None, "ac", "stop"))
    tools = RequestClass("chat", "tools", "stream")
    json = RequestClass("completions", "json", "whole")
    for i, (runs, cls) in enumerate([(same, tools), (split, json), (split, json), (same, None)]):
        comparison = comparer.compare(Trial("h", runs, TrialContext("u", "m", "")))
        agg.fold(Compared(i, KEY, comparison, (), cls), "1")
        plain.fold(Compared(i, KEY, comparison, ()), "1")
    view = agg.publish()
    by_class = {ckey: (s.trials, s.pairs, s.diverged) for ckey, s in view.class_snapshots()}
    assert by_class == {("u", "m", tools): (1, 1, 0), ("u", "m", json): (2, 2, 2)}
    (overall,) = [snap for _, snap, _ in view.snapshots()]  # every trial, classed or not
    (unclassed,) = [snap for _, snap, _ in plain.publish().snapshots()]
    assert (overall.trials, overall.pairs, overall.diverged) == (4, 4, 2)
    assert overall == unclassed and plain.publish().by_class == ()


def test_init_carries_the_frozen_config() -> None:
    up = {"name": "u", "base_url": "http://127.0.0.1:9/v1", "models": ["m"]}
    config = build_config({"upstreams": [up], "shadow": {"enabled": True}}, {})
    again = unframe(frame(Init(config, b"k" * 16, 0)))
    assert again.config == config and again.config.shadow_config == config.shadow_config


class FakeLink:
    """Records what the Executor sends; the test plays the Worker."""

    start_timeout_s = 5.0
    stop_timeout_s = 5.0

    def __init__(self) -> None:
        self.sent: list[ToWorker] = []
        self.on_message: OnMessage = lambda _m: None
        self._closed: asyncio.Future[None] | None = None

    async def open(self, on_message: OnMessage, on_error: Callable[[], None]) -> None:
        self.on_message = on_message
        self._closed = asyncio.get_running_loop().create_future()
        on_message(Ready())

    def send(self, message: ToWorker) -> None:
        self.sent.append(message)
        if isinstance(message, Stop):
            self.on_message(Stopped())

    def closed(self) -> asyncio.Future[None]:
        assert self._closed is not None
        return self._closed

    async def close(self) -> str:
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        return "closed"


class Probe:
    def __init__(self, n: int) -> None:
        self.n = n

    def get(self, upstream: str) -> int:
        return self.n


def job(job_id: int) -> Job:
    return Job(job_id, KEY, 1, "chat", b"{}", (), False, b"{}", ())


async def started(config: ShadowConfig) -> tuple[Executor, FakeLink, Aggregator, LoadTracker]:
    link = FakeLink()
    agg = Aggregator(config)
    load = LoadTracker(Probe(2))
    executor = Executor(config, link, load, agg)
    await executor.start()
    return executor, link, agg, load


async def test_the_executor_follows_each_job_until_its_terminal_outcome() -> None:
    config = ShadowConfig(enabled=True, queue_size=1, max_concurrent=1)
    executor, link, agg, load = await started(config)
    assert await executor.idle(0.0)
    assert executor.submit(job(0)) and executor.submit(job(1))
    assert executor.full() and not executor.submit(job(2))  # 1 waiting + 1 in progress
    assert (executor.pending(), executor.queue_depth()) == (2, 1)
    assert [m for m in link.sent if isinstance(m, Job)] == [job(0), job(1)]
    waiting = asyncio.ensure_future(executor.idle(30.0))
    # job 0: its replay is in flight, and then done; then the budget drops job 1
    link.on_message(ReplayStarted(0, 0, "u"))
    assert load.replays_in_flight() == 1
    link.on_message(ReplayDone(0, 0, KEY, "ok", 12))
    link.on_message(LogprobsLearned("u", "m", True))
    link.on_message(Dropped(KEY, "budget", 1))
    assert load.replays_in_flight() == 0
    await asyncio.sleep(0)
    assert not waiting.done() and executor.pending() == 1
    link.on_message(Failed(KEY, 0))
    assert await waiting  # woken by the last terminal outcome, no polling
    link.on_message(Failed(KEY, 0))  # a second end of the same job is not counted again
    view = await agg.flush()
    assert view.totals() == {"sampled": 0, "replayed": 0, "failed": 1, "dropped": 1}
    assert view.replay_tokens[KEY] == 12 and agg.supports_logprobs("u", "m") is True
    assert link.sent[2:] == []  # nothing goes back to the Worker but Jobs
    await executor.stop()


async def test_a_trial_is_filed_under_the_largest_load_its_replays_met() -> None:
    config = ShadowConfig(enabled=True, replays=3)
    executor, link, agg, load = await started(config)
    probe = load._in_flight
    assert isinstance(probe, Probe)
    executor.submit(job(5))  # its primary met a load of 1
    probe.n = 6
    link.on_message(ReplayStarted(5, 0, "u"))  # 6 + itself: 7, but refused asking for logprobs
    link.on_message(ReplayDone(5, 0, KEY, None))
    probe.n = 2
    link.on_message(ReplayStarted(5, 1, "u"))  # 3: ok
    link.on_message(ReplayDone(5, 1, KEY, "ok"))
    probe.n = 30
    link.on_message(ReplayStarted(5, 2, "u"))  # 31: failed
    link.on_message(ReplayDone(5, 2, KEY, "error"))
    comparer = OnlineEstimator(OnlineConfig())
    runs = (Run(("a", "b"), None, None, "ab", "stop"), Run(("a", "c"), None, None, "ac", "stop"))
    comparison = comparer.compare(Trial("h", runs, TrialContext("u", "m", "")))
    link.on_message(Compared(5, KEY, comparison, ()))
    view = await agg.flush()
    assert [lkey for lkey, _ in view.load_snapshots()] == [("u", "m", "4")]
    assert view.replay_requests[("u", "m", "ok")] == 1
    assert view.replay_requests[("u", "m", "error")] == 1  # the refused attempt is not counted
    assert load.replays_in_flight() == 0 and executor.pending() == 0
    await executor.stop()


async def test_jobs_of_a_worker_that_is_gone_are_counted_failed() -> None:
    errors: list[int] = []
    executor, link, agg, load = await started(ShadowConfig(enabled=True))
    agg.on_internal_error = lambda: errors.append(1)
    for i in range(3):
        assert executor.submit(job(i))
    link.on_message(ReplayStarted(0, 0, "u"))  # one replay in flight when it dies
    await link.close()
    assert await executor.idle(5.0)
    assert load.replays_in_flight() == 0 and errors == [1]
    assert executor.full() and not executor.submit(job(3))  # no room until the proxy restarts
    assert (await agg.flush()).totals()["failed"] == 3
    await executor.stop()


@pytest.mark.parametrize("refresh", [60.0, 0.05])
async def test_eligible_requests_alone_do_not_republish_every_interval(refresh: float) -> None:
    renders: list[int] = []

    def render(view: ShadowView) -> bytes:
        renders.append(view.version)
        return b""

    agg = Aggregator(
        ShadowConfig(enabled=True),
        render=render,
        publish_interval_s=0.001,
        eligible_refresh_s=refresh,
    )
    await agg.start()
    try:
        agg.sampled(KEY)  # a change: published within the interval
        await until(lambda: agg.view.totals()["sampled"] == 1)
        version = agg.view.version
        for _ in range(100):
            agg.count_eligible(KEY)
        if refresh > 1:
            await asyncio.sleep(0.1)  # 100 publish intervals
            assert agg.view.version == version and KEY not in agg.view.eligible
            agg.apply(Dropped(KEY, "budget"))  # the next change carries the count along
        await until(lambda: agg.view.eligible.get(KEY) == 100)
        version = agg.view.version
        await asyncio.sleep(0.2)  # nothing changed since: nothing published
        assert agg.view.version == version
    finally:
        await agg.stop()
    assert renders == sorted(set(renders))
