"""Run a list of keyed jobs under a fixed concurrency, bounded in count and time.

Each completed run is appended to the store as it arrives (so a kill loses at most the runs in
flight). Stopping (the count or time bound, or SIGINT via ``stop``) lets in-flight requests be
cancelled and reports why; failed requests are counted and not recorded, so a rerun retries them.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from measure.client import RequestFailed
from measure.progress import Progress
from measure.store import Key, Record, Store

GIVE_UP_AFTER = 5  # failures before any success: stop instead of retrying every job


def spread(ids: Sequence[str], runs: int) -> list[tuple[str, int]]:
    """(prompt id, run index) in run-major order, prompts in a fresh fixed-seed order for each
    run: two runs of one prompt are then issued at different times next to different prompts, so
    under load they meet different batch compositions (where the batch noise comes from)."""
    out: list[tuple[str, int]] = []
    for r in range(runs):
        order = list(ids) if r == 0 else random.Random(r).sample(list(ids), len(ids))
        out += [(pid, r) for pid in order]
    return out


@dataclass(frozen=True)
class Outcome:
    done: int
    failed: int
    errors: tuple[str, ...]  # first few failure messages
    stopped: str | None  # None: all jobs ran; else why it stopped early
    wall_s: float


@dataclass
class Budget:
    """Requests and seconds left, shared across the phases of one command."""

    requests: int | None
    deadline: float | None  # time.monotonic() value

    def exhausted(self) -> str | None:
        if self.requests is not None and self.requests <= 0:
            return "--max-requests reached"
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return "--time-limit reached"
        return None


async def execute(
    keys: Sequence[Key],
    send: Callable[[Key], Awaitable[Record]],
    store: Store,
    *,
    concurrency: int,
    budget: Budget,
    stop: asyncio.Event,
    progress: Progress,
) -> Outcome:
    queue = list(reversed(keys))
    errors: list[str] = []
    counts = {"done": 0, "failed": 0}
    stopped: list[str] = []
    t0 = time.monotonic()

    async def worker() -> None:
        while queue:
            why = "interrupted (SIGINT)" if stop.is_set() else budget.exhausted()
            if why:
                if not stopped:
                    stopped.append(why)
                return
            key = queue.pop()
            if budget.requests is not None:
                budget.requests -= 1
            try:
                rec = await send(key)
            except RequestFailed as exc:
                counts["failed"] += 1
                if len(errors) < 5:
                    errors.append(f"{exc}{root_cause(exc)}")
                progress.step(ok=False)
                if counts["failed"] >= GIVE_UP_AFTER and counts["done"] == 0 and not stopped:
                    # An endpoint that is down or wrong should not be hammered for hours.
                    stopped.append(f"the first {GIVE_UP_AFTER} requests failed ({errors[0]})")
                    queue.clear()
                continue
            store.append(rec)
            counts["done"] += 1
            progress.step()

    async def watch() -> None:
        # Wake up at the deadline or on SIGINT, then cancel the workers' in-flight requests.
        timeout = None if budget.deadline is None else max(0.0, budget.deadline - time.monotonic())
        try:
            await asyncio.wait_for(stop.wait(), timeout)
            stopped.append("interrupted (SIGINT)")
        except TimeoutError:
            stopped.append("--time-limit reached")

    workers = [
        asyncio.create_task(worker(), name=f"measure-worker-{i}")
        for i in range(max(1, concurrency))
    ]
    watcher = asyncio.create_task(watch(), name="measure-watch")
    everyone: asyncio.Future[list[BaseException | None]] = asyncio.gather(
        *workers, return_exceptions=True
    )
    waiters: set[asyncio.Future[Any]] = {everyone, watcher}
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if watcher.done():
            for w in workers:
                w.cancel()
        results = await everyone
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    progress.close()
    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
            raise r
    return Outcome(
        counts["done"],
        counts["failed"],
        tuple(errors),
        stopped[0] if stopped and (queue or stop.is_set() or counts["done"] == 0) else None,
        time.monotonic() - t0,
    )


def root_cause(exc: BaseException) -> str:
    """`" (Connection refused)"`: the innermost OS error under a client library's wrappers (the
    openai SDK says only "Connection error."), or "" when there is none."""
    found: OSError | None = None
    seen: set[int] = set()
    inner = exc.__cause__ or exc.__context__
    while inner is not None and id(inner) not in seen:
        seen.add(id(inner))
        if isinstance(inner, OSError) and inner.errno:
            found = inner
        inner = inner.__cause__ or inner.__context__
    return f" ({os.strerror(found.errno)})" if found is not None and found.errno else ""
