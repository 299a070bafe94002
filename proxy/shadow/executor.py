"""The executor boundary: where the Worker runs, and the one place Jobs leave and Outcomes return.

`Executor` is the proxy's side, the same in both modes: it bounds what it sends (`queue_size`
waiting plus `max_concurrent` in progress), follows each Job until its terminal outcome (`pending`,
`idle`), counts its replays in flight in the LoadTracker (the load each one meets, the largest of
which files the trial under its load bucket), and hands every outcome to the Aggregator. Nothing
goes back to the Worker but Jobs. The mode chooses only the `Link` the messages travel by:

- `InlineLink`: the Worker runs on the proxy's event loop (its comparisons in a worker thread);
  messages are handed over as objects;
- `ProcessLink`: the Worker runs in the shadow worker process (`python -m proxy.shadow.worker`),
  with its own event loop and upstream connection pool; messages are pickled frames on a socket pair
  (proxy.shadow.channel), corked and written once per loop iteration, so `send` never blocks.

At stop the Worker drops what it still holds as `shutdown` and fails the trials in progress. If the
worker process dies, what it held is counted failed, the loss is logged and counted as an internal
error, and later samples are dropped as `queue_full` (no room) until the proxy restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from proxy.config import Config
from proxy.shadow.aggregator import Aggregator
from proxy.shadow.channel import Channel
from proxy.shadow.config import ShadowConfig
from proxy.shadow.load import LoadTracker, load_bucket
from proxy.shadow.messages import (
    Compared,
    Dropped,
    Failed,
    FromWorker,
    Init,
    Job,
    Ready,
    ReplayDone,
    ReplayStarted,
    Stop,
    Stopped,
    ToWorker,
)
from proxy.shadow.view import Key
from proxy.shadow.worker import ReplayTransport, Worker

log = logging.getLogger("tbg.shadow")

OnMessage = Callable[[FromWorker], None]


class Link(Protocol):
    """How messages reach the Worker and come back; `closed` completes if the Worker is gone."""

    start_timeout_s: float
    stop_timeout_s: float

    async def open(self, on_message: OnMessage, on_error: Callable[[], None]) -> None:
        """Start the Worker; it answers `Ready` through `on_message` once it takes jobs."""
        ...

    def send(self, message: ToWorker) -> None: ...
    def closed(self) -> asyncio.Future[None]: ...
    async def close(self) -> str:
        """Release the Worker (after `Stopped`, or to abandon it); returns how it ended."""
        ...


class InlineLink:
    """The Worker on the proxy's own event loop."""

    start_timeout_s = 60.0
    stop_timeout_s = 10.0

    def __init__(self, config: ShadowConfig, transport: ReplayTransport, hash_key: bytes) -> None:
        self._config = config
        self._transport = transport
        self._hash_key = hash_key
        self._worker: Worker | None = None
        self._on_message: OnMessage = lambda _m: None
        self._stopping: asyncio.Task[None] | None = None
        self._closed: asyncio.Future[None] | None = None

    async def open(self, on_message: OnMessage, on_error: Callable[[], None]) -> None:
        self._on_message = on_message
        self._closed = asyncio.get_running_loop().create_future()
        self._worker = Worker(self._config, self._transport, on_message, self._hash_key,
                              compare_in_thread=True)  # fmt: skip
        await self._worker.start()
        on_message(Ready())

    def send(self, message: ToWorker) -> None:
        if self._worker is None:
            return
        if isinstance(message, Job):
            self._worker.handle(message)
        elif isinstance(message, Stop) and self._stopping is None:
            self._stopping = asyncio.create_task(self._stop(), name="tbg-shadow-worker-stop")

    async def _stop(self) -> None:
        if self._worker is not None:
            await self._worker.stop()
        self._on_message(Stopped())

    def closed(self) -> asyncio.Future[None]:
        assert self._closed is not None
        return self._closed

    async def close(self) -> str:
        if self._stopping is not None:
            self._stopping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stopping
        self._worker = None
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        return "inline"


@dataclass(frozen=True)
class WorkerSpec:
    """How to run the shadow worker process: the proxy's config (upstreams, auth, timeouts, the
    shadow section, resolved replay keys) travels to the child at start."""

    config: Config
    # Added to the child's nice value: on a busy machine the kernel then runs the primaries (the
    # proxy process) before the replays and comparisons, which can wait. 0 keeps the proxy's.
    nice: int = 10
    start_timeout_s: float = 60.0
    stop_timeout_s: float = 10.0


def _child_env() -> dict[str, str]:
    """The child imports this very `proxy` package, whatever put it on the parent's path."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}


class ProcessLink:
    """The Worker in the shadow worker process, over a socket pair."""

    def __init__(self, spec: WorkerSpec, hash_key: bytes) -> None:
        self._spec = spec
        self._hash_key = hash_key
        self.start_timeout_s = spec.start_timeout_s
        self.stop_timeout_s = spec.stop_timeout_s
        self._proc: asyncio.subprocess.Process | None = None
        self._channel: Channel[FromWorker] | None = None

    @property
    def pid(self) -> int | None:
        """The worker process's id while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    async def open(self, on_message: OnMessage, on_error: Callable[[], None]) -> None:
        parent, child = socket.socketpair()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "proxy.shadow.worker", str(child.fileno()),
                pass_fds=(child.fileno(),), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, env=_child_env(),
            )  # fmt: skip
        finally:
            child.close()
        _, self._channel = await asyncio.get_running_loop().create_connection(
            lambda: Channel[FromWorker](on_message, on_error), sock=parent
        )
        self._channel.send(Init(self._spec.config, self._hash_key, self._spec.nice))

    def send(self, message: ToWorker) -> None:
        if self._channel is not None:
            self._channel.send(message)  # corked, written by the loop: never blocks

    def closed(self) -> asyncio.Future[None]:
        assert self._channel is not None
        return self._channel.closed

    async def close(self) -> str:
        if self._channel is not None:
            await self._channel.aclose()
        proc, self._proc = self._proc, None
        if proc is None:
            return "no process"
        try:
            await asyncio.wait_for(proc.wait(), 5.0)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        return f"returncode {proc.returncode}"


class _Pending:
    """A Job sent, until its terminal outcome: the largest load its replays met, and the
    replays it has in flight (attempt -> upstream, load, pod)."""

    __slots__ = ("key", "load", "replays")

    def __init__(self, key: Key, load: int) -> None:
        self.key = key
        self.load = load
        self.replays: dict[int, tuple[str, int, str | None]] = {}


class Executor:
    """Sends Jobs to the Worker through a Link and applies what comes back (event loop only)."""

    def __init__(
        self, config: ShadowConfig, link: Link, load: LoadTracker, aggregator: Aggregator
    ) -> None:
        self.link = link
        self._load = load
        self._agg = aggregator
        # The Worker takes a job as soon as one of its `max_concurrent` tasks is free, so jobs
        # beyond those are the ones waiting.
        self._workers = config.max_concurrent
        self._limit = config.queue_size + config.max_concurrent
        self._jobs: dict[int, _Pending] = {}  # sent, not yet ended
        self._idle = asyncio.Event()
        self._idle.set()
        self._ready: asyncio.Future[None] | None = None
        self._stopped = asyncio.Event()  # the Worker said so, or it is gone
        self._open = False
        self._broken = False
        self._watch: asyncio.Task[None] | None = None

    # -- the Tap's side (event loop only) --------------------------------------------------------
    def full(self) -> bool:
        return self._broken or not self._open or len(self._jobs) >= self._limit

    def submit(self, job: Job) -> bool:
        """Send a finished primary without waiting; False when there is no room."""
        if self.full():
            return False
        self._jobs[job.id] = _Pending(job.key, job.load_at_start)
        self._idle.clear()
        self.link.send(job)
        return True

    def queue_depth(self) -> int:
        return max(0, len(self._jobs) - self._workers)

    def pending(self) -> int:
        """Jobs sent whose terminal outcome has not come back."""
        return len(self._jobs)

    async def idle(self, within_s: float) -> bool:
        """Wait until every job sent has ended; False if that takes longer than `within_s`."""
        if self._idle.is_set():
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), within_s)
        except TimeoutError:
            return False
        return True

    # -- what comes back -------------------------------------------------------------------------
    def handle(self, message: FromWorker) -> None:
        if isinstance(message, ReplayStarted):
            job = self._jobs.get(message.job)
            if job is not None:  # the load it meets, itself included
                load = self._load.replay_started(message.upstream, message.pod)
                job.replays[message.attempt] = (message.upstream, load, message.pod)
        elif isinstance(message, ReplayDone):
            job = self._jobs.get(message.job)
            started = job.replays.pop(message.attempt, None) if job is not None else None
            if job is not None and started is not None:
                self._load.replay_finished(started[0], started[2])
                if message.outcome == "ok":
                    job.load = max(job.load, started[1])
            if message.outcome is not None:
                self._agg.apply(message)
        elif isinstance(message, Compared):
            job = self._end(message.job)
            if job is not None:
                self._agg.fold(message, load_bucket(job.load))
        elif isinstance(message, Dropped | Failed):
            if message.job is None or self._end(message.job) is not None:
                self._agg.apply(message)
        elif isinstance(message, Ready):
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
        elif isinstance(message, Stopped):
            self._stopped.set()
        else:
            self._agg.apply(message)

    def _end(self, job_id: int) -> _Pending | None:
        """A job's terminal outcome came back (None: it was already counted, as lost)."""
        job = self._jobs.pop(job_id, None)
        if job is not None:
            for upstream, _, pod in job.replays.values():
                self._load.replay_finished(upstream, pod)
        if not self._jobs:
            self._idle.set()
        return job

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        self._ready = asyncio.get_running_loop().create_future()
        await self.link.open(self.handle, self._agg.on_internal_error)
        closed = self.link.closed()
        # Wait for the Worker (a process's imports take a second or two): the proxy starts with a
        # working shadow path, or does not start, saying why (the child's error is logged above).
        done, _ = await asyncio.wait(
            (self._ready, closed), timeout=self.link.start_timeout_s,
            return_when=asyncio.FIRST_COMPLETED,
        )  # fmt: skip
        if self._ready not in done:
            how = await self.link.close()
            raise RuntimeError(
                f"the shadow worker process did not start ({how}); its error, if any, is logged"
                " above"
            )
        self._open = True
        self._watch = asyncio.create_task(self._watch_link(closed), name="tbg-shadow-process")

    async def stop(self) -> None:
        if not self._open:
            return
        self.link.send(Stop())
        try:
            await asyncio.wait_for(self._stopped.wait(), self.link.stop_timeout_s)
        except TimeoutError:
            log.error("shadow worker did not stop within %ss", self.link.stop_timeout_s)
            self._agg.on_internal_error()
            self._stopped.set()  # what it still held is counted failed below
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        await self.link.close()
        self._open = False
        self._account_lost()

    async def _watch_link(self, closed: asyncio.Future[None]) -> None:
        await asyncio.shield(closed)  # the Worker's end closed: after Stopped, or it died
        if not self._stopped.is_set():
            how = await self.link.close()
            log.error("shadow worker process exited unexpectedly (%s)", how)
            self._agg.on_internal_error()
            self._broken = True
            self._account_lost()
            self._stopped.set()

    def _account_lost(self) -> None:
        """Jobs the Worker will never report (it died or did not stop in time): failed."""
        for job_id in list(self._jobs):
            job = self._end(job_id)
            if job is not None:
                self._agg.apply(Failed(job.key, job_id))
