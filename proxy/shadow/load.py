"""Load context for a replay: requests in flight to the upstream at the moment the replay is sent.

Two sources: the proxy's own in-flight count (always) plus the replays the shadow path itself has in
flight, and optionally the upstream's `vllm:num_requests_running` scraped from its /metrics in the
background (it sees traffic that does not pass through this proxy replica). The larger one wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Iterable
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


class MetricsFetcher(Protocol):
    async def fetch_metrics(self, upstream: str) -> str:
        """The upstream's Prometheus text exposition (GET <root>/metrics)."""
        ...


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

    def replay_started(self, upstream: str) -> int:
        """Mark one replay in flight; returns the load it meets (itself included)."""
        self._replays[upstream] = self._replays.get(upstream, 0) + 1
        return self.current(upstream)

    def replay_finished(self, upstream: str) -> None:
        self._replays[upstream] = max(0, self._replays.get(upstream, 0) - 1)

    def replays_in_flight(self) -> int:
        return sum(self._replays.values())

    def current(self, upstream: str) -> int:
        local = self._in_flight.get(upstream) + self._replays.get(upstream, 0)
        return max(local, self._scraped.get(upstream, 0))

    def start_polling(
        self, fetcher: MetricsFetcher, upstreams: Iterable[str], period: float
    ) -> None:
        names = tuple(upstreams)
        self._poller = asyncio.create_task(self._poll(fetcher, names, period), name="tbg-load-poll")

    async def _poll(
        self, fetcher: MetricsFetcher, upstreams: tuple[str, ...], period: float
    ) -> None:
        while True:
            for name in upstreams:
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

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
