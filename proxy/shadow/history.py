"""The estimate's history: a bounded ring of the published estimates, one point every
`shadow.history.interval_seconds`, behind `GET /tbg/history` and the live page (`/ui`).

The ring is owned by the app (`app[HISTORY]`); its recorder is a named task in the app's cleanup
context that reads the ShadowView the Aggregator published (it never touches the estimators).
With `shadow.history.path` each point is also appended to a JSON-lines file, read back at start,
so a restart keeps the picture (not the estimators: the estimate itself starts again from the
first trial, and the page shows the gap). The file is compacted to the last `points` lines once it
holds twice as many; a line that does not parse (a crash mid-write) is skipped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from proxy import errors
from proxy.shadow.history_config import HistoryConfig
from proxy.shadow.view import ShadowView

log = logging.getLogger("tbg.shadow")


def _num(x: float) -> float | None:
    return x if math.isfinite(x) else None


@dataclass(frozen=True, slots=True)
class Series:
    """One (upstream, model_name) estimate at one point in time."""

    upstream: str
    model_name: str
    method: str
    estimate: float | None
    lower: float | None
    upper: float | None
    pairs: int
    diverged: int
    last_update: float  # unix time of the last folded trial; 0: none yet

    def to_json(self) -> dict[str, Any]:
        return {
            "upstream": self.upstream,
            "model_name": self.model_name,
            "method": self.method,
            "estimate": self.estimate,
            "lower": self.lower,
            "upper": self.upper,
            "pairs": self.pairs,
            "diverged": self.diverged,
            "last_update": self.last_update,
        }


@dataclass(frozen=True, slots=True)
class Point:
    at: float  # unix time the point was taken
    series: tuple[Series, ...]
    accounting: tuple[tuple[str, int], ...]  # sampled, replayed, dropped, failed (summed)

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "estimates": [s.to_json() for s in self.series],
            "accounting": dict(self.accounting),
        }

    @staticmethod
    def from_json(data: Any) -> Point:
        """A point read back from the file; raises KeyError/TypeError/ValueError when malformed."""
        series = tuple(
            Series(
                str(e["upstream"]), str(e["model_name"]), str(e["method"]),
                _opt(e["estimate"]), _opt(e["lower"]), _opt(e["upper"]),
                int(e["pairs"]), int(e["diverged"]), float(e["last_update"]),
            )
            for e in data["estimates"]
        )  # fmt: skip
        accounting = tuple((str(k), int(v)) for k, v in dict(data["accounting"]).items())
        return Point(float(data["at"]), series, accounting)


def _opt(x: Any) -> float | None:
    return None if x is None else float(x)


def point_of(view: ShadowView, at: float) -> Point:
    series = tuple(
        Series(upstream, model, snap.method, _num(snap.estimate), _num(snap.lower),
               _num(snap.upper), snap.pairs, snap.diverged, updated)
        for (upstream, model), snap, updated in view.snapshots()
    )  # fmt: skip
    return Point(at, series, tuple(sorted(view.totals().items())))


class HistoryFile:
    """The JSON-lines file behind a history (blocking I/O: call it from a worker thread)."""

    def __init__(self, path: str, points: int) -> None:
        self.path = path
        self._points = points
        self._lines = 0  # lines in the file, to know when to compact

    def load(self) -> tuple[list[Point], int]:
        """The last `points` points in the file, and how many lines were skipped as malformed."""
        try:
            with open(self.path, "rb") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return [], 0
        self._lines = len(lines)
        points: list[Point] = []
        bad = 0
        for line in lines[-self._points :]:
            try:
                points.append(Point.from_json(orjson.loads(line)))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
                bad += 1
        return points, bad

    def append(self, point: Point, ring: Iterable[Point]) -> None:
        """Append one point; rewrite the file with the ring's points when it has grown to twice
        the capacity (through a temporary file and a rename: a crash leaves one whole file)."""
        if self._lines + 1 >= 2 * self._points:
            tmp = f"{self.path}.tmp"
            with open(tmp, "wb") as f:
                kept = 0
                for p in ring:
                    f.write(orjson.dumps(p.to_json()) + b"\n")
                    kept += 1
            os.replace(tmp, self.path)
            self._lines = kept
            return
        with open(self.path, "ab") as f:
            f.write(orjson.dumps(point.to_json()) + b"\n")
        self._lines += 1


class History:
    """The ring of points (event loop only) and, optionally, its file."""

    def __init__(self, config: HistoryConfig, view: Callable[[], ShadowView]) -> None:
        self.config = config
        self._view = view
        self._ring: deque[Point] = deque(maxlen=config.points)
        self._file = HistoryFile(config.path, config.points) if config.path else None
        self._task: asyncio.Task[None] | None = None
        self._write_failed = False
        self.skipped_lines = 0  # malformed lines found in the file at start
        # Counts a bug (tbg_internal_errors_total{where="shadow"}); set by install_history.
        self.on_internal_error: Callable[[], None] = lambda: None

    def points(self, since: float | None = None) -> list[Point]:
        if since is None:
            return list(self._ring)
        return [p for p in self._ring if p.at > since]

    def record(self, at: float | None = None) -> Point:
        point = point_of(self._view(), time.time() if at is None else at)
        self._ring.append(point)
        return point

    def to_json(self, since: float | None = None) -> dict[str, Any]:
        return {
            "now": time.time(),
            "interval_seconds": self.config.interval_seconds,
            "capacity": self.config.points,
            "persisted": self._file is not None,
            "points": [p.to_json() for p in self.points(since)],
        }

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._file is not None:
            try:
                points, self.skipped_lines = await asyncio.to_thread(self._file.load)
            except OSError as exc:  # unreadable: start empty, keep appending
                log.warning("history file %s unreadable: %s", self._file.path, exc)
                points = []
            self._ring.extend(points)
            if self.skipped_lines:
                log.warning("history file %s: %d malformed lines skipped", self._file.path,
                            self.skipped_lines)  # fmt: skip
        self._task = asyncio.create_task(self._loop(), name="tbg-shadow-history")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._save(self.record())  # the last view, as the shadow path stopped

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.interval_seconds)
            try:
                await self._save(self.record())
            except Exception:  # a bug here must cost a point, never the history
                log.exception("history point not recorded")
                self.on_internal_error()

    async def _save(self, point: Point) -> None:
        if self._file is None:
            return
        try:
            await asyncio.to_thread(self._file.append, point, tuple(self._ring))
        except OSError as exc:  # disk full, permissions: keep the history in memory, say it once
            if not self._write_failed:
                log.warning("history file %s not written: %s", self._file.path, exc)
            self._write_failed = True
        else:
            self._write_failed = False


HISTORY = web.AppKey("tbg_shadow_history", History)


def install_history(
    app: web.Application,
    config: HistoryConfig,
    view: Callable[[], ShadowView],
    on_internal_error: Callable[[], None] = lambda: None,
) -> History:
    """Register the history, its recorder task and `GET /tbg/history` (`?since=<unix time>`:
    only the points after it, for a page that polls)."""
    history = History(config, view)
    history.on_internal_error = on_internal_error
    app[HISTORY] = history

    async def handle(request: web.Request) -> web.Response:
        raw = request.query.get("since")
        since: float | None = None
        if raw is not None:
            try:
                since = float(raw)
            except ValueError:
                raise errors.bad_request(
                    f"since must be a unix time in seconds, got {raw!r}"
                ) from None  # the error middleware writes its OpenAI-style body
        return web.Response(body=orjson.dumps(history.to_json(since)),
                            content_type="application/json")  # fmt: skip

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        await history.start()
        yield
        await history.stop()

    app.router.add_get("/tbg/history", handle)
    app.cleanup_ctx.append(lifecycle)
    return history
