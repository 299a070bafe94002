"""Load context for a replay: requests in flight to the upstream at the moment the replay is sent.

Two sources: the proxy's own in-flight count (always) plus the replays the shadow path itself has in
flight, and optionally the upstream's `vllm:num_requests_running` scraped from its /metrics in the
background (it sees traffic that does not pass through this proxy replica). The larger one wins.

For an upstream whose endpoints come from DNS (proxy/endpoints.py) the load is the pod's: the
proxy's requests in flight to that address, the replays sent to it, and with `vllm_metrics` that
pod's own /metrics, each address polled in turn (what the Service name would answer is one random
pod's). A trial's pod is its primary's; its replays go to the same pod where it still exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Iterable
from typing import Protocol

log = logging.getLogger("tbg.shadow.load")

LOAD_BUCKETS: tuple[str, ...] = ("1", "2", "4", "8", "16", "32", "64+")

_RUNNING = re.compile(r"^vllm:num_requests_running(?:\{[^}]*\})?\s+([0-9.eE+-]+)\s*$", re.MULTILINE)


def load_bucket(in_flight: int) -> str:
    """Smallest power of two ≥ in_flight (at least 1), capped at "64+"."""
    n = max(1, in_flight)
    if n > 32:
        return "64+"
    return str(1 << (n - 1).bit_length())


class InFlightProbe(Protocol):
    def get(self, upstream: str) -> int: ...

    def pod(self, upstream: str, pod: str) -> int: ...


class MetricsFetcher(Protocol):
    async def fetch_metrics(self, upstream: str, pod: str | None = None) -> str:
        """The upstream's Prometheus text exposition (GET <root>/metrics), of one pod if named."""
        ...


# The pods (addresses) of an upstream to poll one by one; () for a static base_url.
PodLister = Callable[[str], tuple[str, ...]]


def running_requests(exposition: str) -> int | None:
    """Sum of `vllm:num_requests_running` over its series, None when absent."""
    values = [float(m.group(1)) for m in _RUNNING.finditer(exposition)]
    return round(sum(values)) if values else None


class LoadTracker:
    """Current load per upstream as seen by the shadow path (the Executor counts the Worker's
    replays in and out of it: `Acquire` / `Release`)."""

    def __init__(self, in_flight: InFlightProbe) -> None:
        self._in_flight = in_flight
        self._replays: dict[str, int] = {}
        self._scraped: dict[str, int] = {}
        self._poller: asyncio.Task[None] | None = None
        self._pod_replays: dict[tuple[str, str], int] = {}  # only while in flight
        self._pod_scraped: dict[tuple[str, str], int] = {}  # only pods still listed

    def replay_started(self, upstream: str, pod: str | None = None) -> int:
        """Mark one replay in flight; returns the load it meets (itself included): its pod's
        when it has one."""
        self._replays[upstream] = self._replays.get(upstream, 0) + 1
        if pod is not None:
            key = (upstream, pod)
            self._pod_replays[key] = self._pod_replays.get(key, 0) + 1
        return self.current(upstream, pod)

    def replay_finished(self, upstream: str, pod: str | None = None) -> None:
        self._replays[upstream] = max(0, self._replays.get(upstream, 0) - 1)
        if pod is not None:
            key = (upstream, pod)
            left = self._pod_replays.get(key, 0) - 1
            if left > 0:
                self._pod_replays[key] = left
            else:
                self._pod_replays.pop(key, None)

    def replays_in_flight(self) -> int:
        return sum(self._replays.values())

    def current(self, upstream: str, pod: str | None = None) -> int:
        if pod is not None:
            key = (upstream, pod)
            local = self._in_flight.pod(upstream, pod) + self._pod_replays.get(key, 0)
            return max(local, self._pod_scraped.get(key, 0))
        local = self._in_flight.get(upstream) + self._replays.get(upstream, 0)
        return max(local, self._scraped.get(upstream, 0))

    def scraped(self, upstream: str, pod: str) -> int | None:
        """What `pod`'s own /metrics last said (None: not polled, or it did not say)."""
        return self._pod_scraped.get((upstream, pod))

    def start_polling(
        self,
        fetcher: MetricsFetcher,
        upstreams: Iterable[str],
        period: float,
        pods: PodLister | None = None,
    ) -> None:
        names = tuple(upstreams)
        self._poller = asyncio.create_task(
            self._poll(fetcher, names, period, pods), name="tbg-load-poll"
        )

    async def _poll(
        self,
        fetcher: MetricsFetcher,
        upstreams: tuple[str, ...],
        period: float,
        pods: PodLister | None,
    ) -> None:
        while True:
            for name in upstreams:
                listed = pods(name) if pods is not None else ()
                if listed:
                    await self._poll_pods(fetcher, name, listed)
                    continue
                try:
                    running = running_requests(await fetcher.fetch_metrics(name))
                except Exception as exc:  # a flaky /metrics must not stop the poller
                    log.warning(
                        "load poll of %s failed: %s", name, type(exc).__name__, exc_info=exc
                    )
                    continue
                if running is not None:
                    self._scraped[name] = running
            await asyncio.sleep(period)

    async def _poll_pods(self, fetcher: MetricsFetcher, name: str, listed: tuple[str, ...]) -> None:
        """Each pod's own /metrics, concurrently; pods no longer listed are forgotten."""
        answers = await asyncio.gather(
            *(fetcher.fetch_metrics(name, pod) for pod in listed), return_exceptions=True
        )
        for pod, answer in zip(listed, answers, strict=True):
            if isinstance(answer, BaseException):
                if not isinstance(answer, Exception):
                    raise answer  # cancelled: the poller is stopping
                log.warning("load poll of %s pod %s failed: %s", name, pod,
                            type(answer).__name__, exc_info=answer)  # fmt: skip
                self._pod_scraped.pop((name, pod), None)  # stale is worse than unknown
                continue
            running = running_requests(answer)
            if running is None:
                self._pod_scraped.pop((name, pod), None)
            else:
                self._pod_scraped[(name, pod)] = running
        gone = [k for k in self._pod_scraped if k[0] == name and k[1] not in listed]
        for key in gone:
            del self._pod_scraped[key]

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
