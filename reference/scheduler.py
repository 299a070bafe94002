"""The scheduler: one owned asyncio task that forms batches and runs them in a worker thread.

Static batching per round: the task takes the first waiting job, waits a short gather window for
more (up to `max_batch`), decodes that batch to completion in a single-thread executor, and only
then looks at the queue again (new arrivals wait for the next round). `max_batch=1` is the serial,
deterministic stack: every request is decoded alone, so reruns are bitwise identical.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from dataclasses import dataclass

from reference.engine import Engine, Job
from reference.metrics import VllmMetrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchPolicy:
    """How jobs are grouped: at most `max_batch` per round, gathered for `gather_s` seconds."""

    max_batch: int = 8
    gather_s: float = 0.005


class Scheduler:
    """Owns the queue, the worker thread and the batching task (start/stop from the app)."""

    def __init__(self, engine: Engine, batching: BatchPolicy, metrics: VllmMetrics) -> None:
        self._engine = engine
        self._batching = batching
        self._metrics = metrics
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="reference-decode"
        )
        self._task = asyncio.create_task(self._run(), name="reference-scheduler")

    async def stop(self) -> None:
        """Cancel the batching task, abort waiting and running jobs, join the worker thread."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while not self._queue.empty():
            self._queue.get_nowait().emit(ConnectionAbortedError("server shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def submit(self, job: Job) -> None:
        if self._task is None or self._task.done():
            raise RuntimeError("scheduler is not running")
        self._metrics.prompt_tokens.inc(len(job.prompt_ids))
        self._queue.put_nowait(job)
        self._metrics.waiting.set(self._queue.qsize())

    async def _gather(self) -> list[Job]:
        batch = [await self._queue.get()]
        if self._batching.max_batch > 1 and self._batching.gather_s > 0:
            await asyncio.sleep(self._batching.gather_s)  # let the requests arriving together land
        while len(batch) < self._batching.max_batch and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return [job for job in batch if not job.cancelled.is_set()]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            self._metrics.waiting.set(self._queue.qsize())
            if not batch:
                continue
            self._metrics.running.set(len(batch))
            future = loop.run_in_executor(self._executor, self._engine.run_batch, batch)
            try:
                await asyncio.shield(future)
            except asyncio.CancelledError:
                for job in batch:  # make the worker stop at its next step
                    job.cancelled.set()
                    job.emit(ConnectionAbortedError("server shutting down"))
                raise
            except Exception:  # already delivered to the jobs; keep serving
                log.exception("decode of a batch of %d failed", len(batch))
            finally:
                self._metrics.running.set(0)
