"""Requests currently in flight, per upstream (read by the metrics gauge and the shadow path)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager


class InFlight:
    """Per-upstream in-flight counter; one per app. Single event loop, so no lock is needed."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

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
