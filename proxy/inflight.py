"""Requests currently in flight, per upstream and, for an upstream whose endpoints come from DNS,
per pod (its address): read by the metrics gauges, the endpoint pick and the shadow path."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager


class InFlight:
    """Per-upstream in-flight counter; one per app. Single event loop, so no lock is needed."""

    __slots__ = ("_counts", "_pods")

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._pods: dict[tuple[str, str], int] = {}  # only pods with requests in flight

    def get(self, upstream: str) -> int:
        return self._counts[upstream]

    def total(self) -> int:
        return sum(self._counts.values())

    def enter(self, upstream: str) -> None:
        """One more in flight (pair with `leave` in a finally; cheaper than `track` per request)."""
        self._counts[upstream] += 1

    def leave(self, upstream: str) -> None:
        self._counts[upstream] -= 1

    @contextmanager
    def track(self, upstream: str) -> Iterator[None]:
        self._counts[upstream] += 1
        try:
            yield
        finally:
            self._counts[upstream] -= 1

    def pod(self, upstream: str, pod: str) -> int:
        """In flight to one address of `upstream` (proxy/endpoints.py)."""
        return self._pods.get((upstream, pod), 0)

    def enter_pod(self, upstream: str, pod: str) -> None:
        key = (upstream, pod)
        self._pods[key] = self._pods.get(key, 0) + 1

    def leave_pod(self, upstream: str, pod: str) -> None:
        key = (upstream, pod)
        left = self._pods.get(key, 0) - 1
        if left > 0:
            self._pods[key] = left
        else:  # keyed only while in flight: pods that went away leave nothing behind
            self._pods.pop(key, None)
