"""The shadow worker process, proxy side: replays and comparisons leave the primaries' event loop.

With `worker="process"` (proxy.shadow.wiring) the ShadowTap's replayer is a `ProcessReplayer`: a
finished, sampled primary becomes a compact `JobSpec` written to a socket pair without waiting
(asyncio buffers it), and a child process (`python -m proxy.shadow.worker`) with its own event loop
and HTTP session replays it, parses the answers, compares the runs and sends back the outcome. The
proxy's loop keeps what must stay in one place: the Sampler's coin flip and rate budget, the
LoadTracker (the child asks it for the load each replay meets), and the Aggregator, the only writer
of the estimates, which folds the comparisons that come back (≈ 0.02 ms each) and publishes the view.

Messages are length-prefixed pickles between a process and its own child. Each job ends with exactly
one terminal message (failed, dropped with its reason, or a comparison), so `pending()` is exact and
sampled = replayed + dropped + failed holds once idle; at stop the child drops what it still holds
as `shutdown` and cancels trials in progress (failed), as the in-process replayer does. If the
child dies, what it held is counted failed, the loss is logged and counted as an internal error, and
later samples are dropped as `queue_full` (the pool has no room) until the proxy restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import copyreg
import io
import logging
import os
import pickle
import socket
import struct
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

import orjson

from proxy.config import Config
from proxy.shadow.aggregator import Aggregator
from proxy.shadow.config import ShadowConfig
from proxy.shadow.load import LoadTracker
from proxy.shadow.replayer import Job, LogprobsKey, remember
from proxy.shadow.view import Key
from proxy.tap import Exchange, RequestInfo, TapPlan

log = logging.getLogger("tbg.shadow")

_HEADER = struct.Struct(">I")


def read_only(d: dict[Any, Any]) -> MappingProxyType[Any, Any]:
    return MappingProxyType(d)


def _reduce_mappingproxy(m: MappingProxyType[Any, Any]) -> tuple[Any, ...]:
    return read_only, (dict(m),)


# Frozen configs and views hold read-only mappings, which pickle refuses by default.
_DISPATCH = {**copyreg.dispatch_table, MappingProxyType: _reduce_mappingproxy}


def frame(message: tuple[Any, ...]) -> bytes:
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = _DISPATCH
    pickler.dump(message)
    data = buf.getvalue()
    return _HEADER.pack(len(data)) + data


class Channel(asyncio.Protocol):
    """Length-prefixed pickled messages over a stream socket, both ways. `send` never blocks:
    frames are corked and written with one system call per loop iteration; every complete frame
    received is handed to `on_message` (an exception there is logged and reported to `on_error`,
    and the channel goes on)."""

    def __init__(
        self, on_message: Callable[[tuple[Any, ...]], None], on_error: Callable[[], None]
    ) -> None:
        self._on_message = on_message
        self._on_error = on_error
        self._in = bytearray()
        self._out: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        buf = self._in
        buf += data
        start = 0
        while len(buf) - start >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buf, start)
            end = start + _HEADER.size + size
            if len(buf) < end:
                break
            message = pickle.loads(buf[start + _HEADER.size : end])
            start = end
            try:
                self._on_message(message)
            except Exception:  # a bug handling one message must not take the channel down
                log.exception("shadow worker channel: handling %r failed", message[0])
                self._on_error()
        del buf[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, message: tuple[Any, ...]) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(frame(message))

    def _flush(self) -> None:
        if self._out and self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"".join(self._out))
        self._out.clear()

    async def aclose(self) -> None:
        """Write what is corked, close, and wait until the socket is closed."""
        self._flush()
        if self._transport is not None:
            self._transport.close()
        await self.closed


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


@dataclass(frozen=True, slots=True)
class WorkerInit:
    """The first message to the child."""

    config: Config
    hash_key: bytes
    nice: int


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A finished, sampled primary as it crosses to the worker: bytes and plain values only (the
    parsed request body is rebuilt from `raw_body`; of the headers only Authorization matters)."""

    key: Key
    load_at_start: int
    route: str
    raw_body: bytes
    authorization: str | None
    stream: bool
    response_body: bytes | None
    events: tuple[Mapping[str, Any], ...]

    @classmethod
    def of(cls, job: Job) -> JobSpec:
        ex, req = job.exchange, job.exchange.request
        auth = req.headers.get("Authorization") or req.headers.get("authorization")
        events = tuple(dict(e) for e in ex.events) if req.stream else ()
        return cls(job.key, job.load_at_start, req.route, req.raw_body, auth, req.stream,
                   ex.response_body, events)  # fmt: skip

    def job(self) -> Job:
        """The Job again, in the worker (what the Replayer reads of it)."""
        request = RequestInfo(
            route=self.route,
            upstream=self.key[0],
            model_name=self.key[1],
            body=orjson.loads(self.raw_body),
            raw_body=self.raw_body,
            headers={"Authorization": self.authorization} if self.authorization else {},
            stream=self.stream,
        )
        exchange = Exchange(
            request, TapPlan(), 200, self.response_body, self.events, True, 0.0, 0.0
        )
        return Job(exchange, self.key, self.load_at_start)


def _child_env() -> dict[str, str]:
    """The child imports this very `proxy` package, whatever put it on the parent's path."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}


class ProcessReplayer:
    """proxy.shadow.tap.ReplayPool backed by the shadow worker process."""

    def __init__(
        self, config: ShadowConfig, spec: WorkerSpec, load: LoadTracker, aggregator: Aggregator
    ) -> None:
        self._spec = spec
        self._load = load
        self._agg = aggregator
        # The child takes a job as soon as one of its `max_concurrent` workers is free, so jobs
        # beyond those are the ones waiting: the same bound as the in-process queue.
        self._workers = config.max_concurrent
        self._limit = config.queue_size + config.max_concurrent
        self._outstanding: Counter[Key] = Counter()  # jobs sent, not yet ended, per key
        self._total = 0
        self._replays: Counter[str] = Counter()  # replays the child has in flight, per upstream
        self._logprobs_ok: dict[LogprobsKey, bool] = {}  # as the child learned it
        self._logprobs_fixed = {"yes": True, "no": False}.get(config.logprobs)
        self._proc: asyncio.subprocess.Process | None = None
        self._channel: Channel | None = None
        self._watch: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._stopped = asyncio.Event()  # the child said so, or it is gone
        self._broken = False

    @property
    def pid(self) -> int | None:
        """The worker process's id while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    # -- ReplayPool (event loop only) -------------------------------------------------------------
    def supports_logprobs(self, upstream: str, model: str) -> bool | None:
        if self._logprobs_fixed is not None:
            return self._logprobs_fixed
        return self._logprobs_ok.get((upstream, model))

    def full(self) -> bool:
        return self._broken or self._channel is None or self._total >= self._limit

    def submit(self, job: Job) -> bool:
        if self.full():
            return False
        self._send(("job", JobSpec.of(job)))
        self._outstanding[job.key] += 1
        self._total += 1
        return True

    def queue_depth(self) -> int:
        return max(0, self._total - self._workers)

    def pending(self) -> int:
        return self._total

    def _send(self, message: tuple[Any, ...]) -> None:
        if self._channel is not None:
            self._channel.send(message)  # corked, written by the loop: never blocks

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        parent, child = socket.socketpair()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "proxy.shadow.worker", str(child.fileno()),
                pass_fds=(child.fileno(),), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, env=_child_env(),
            )  # fmt: skip
        finally:
            child.close()
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        _, channel = await loop.create_connection(
            lambda: Channel(self._handle, self._agg.on_internal_error), sock=parent
        )
        self._channel = channel
        self._send(("init", WorkerInit(self._spec.config, self._agg.hash_key, self._spec.nice)))
        # Wait for the child (its imports take a second or two): the proxy starts with a working
        # shadow path, or does not start, saying why (the child's own error is on stderr above).
        done, _ = await asyncio.wait(
            (self._ready, channel.closed), timeout=self._spec.start_timeout_s,
            return_when=asyncio.FIRST_COMPLETED,
        )  # fmt: skip
        if self._ready not in done:
            await channel.aclose()
            self._channel = None
            if self._proc.returncode is None:
                self._proc.kill()
            await self._proc.wait()
            raise RuntimeError(
                f"the shadow worker process did not start (returncode {self._proc.returncode});"
                " its error, if any, is logged above"
            )
        self._watch = asyncio.create_task(self._watch_child(channel), name="tbg-shadow-process")

    async def stop(self) -> None:
        channel = self._channel
        if channel is None:
            return
        self._send(("stop",))
        try:
            await asyncio.wait_for(self._stopped.wait(), self._spec.stop_timeout_s)
        except TimeoutError:
            log.error("shadow worker process did not stop within %ss", self._spec.stop_timeout_s)
            self._agg.on_internal_error()
            self._stopped.set()  # what it still held is counted failed below
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        await channel.aclose()
        self._channel = None
        if self._proc is not None:
            try:
                await asyncio.wait_for(self._proc.wait(), 5.0)
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()
            self._proc = None
        self._account_lost()

    async def _watch_child(self, channel: Channel) -> None:
        await asyncio.shield(channel.closed)  # the child closed its end: after "stopped", or died
        if not self._stopped.is_set():
            rc = None
            if self._proc is not None:
                with contextlib.suppress(TimeoutError):
                    rc = await asyncio.wait_for(self._proc.wait(), 5.0)
            log.error("shadow worker process exited unexpectedly (returncode %s)", rc)
            self._agg.on_internal_error()
            self._broken = True
            self._account_lost()
            self._stopped.set()

    def _account_lost(self) -> None:
        """Jobs the child will never report (it died or did not stop in time): failed."""
        for key, n in self._outstanding.items():
            for _ in range(n):
                self._agg.count(key, "failed")
        self._outstanding.clear()
        self._total = 0
        for upstream, n in self._replays.items():
            for _ in range(n):
                self._load.replay_finished(upstream)
        self._replays.clear()

    def _ended(self, key: Key) -> None:
        if self._outstanding[key] > 0:
            self._outstanding[key] -= 1
            self._total -= 1

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "acquire":  # a replay is about to be sent: the load it meets
            _, rid, upstream = message
            self._replays[upstream] += 1
            self._send(("load", rid, self._load.replay_started(upstream)))
        elif kind == "release":
            upstream = message[1]
            if self._replays[upstream] > 0:
                self._replays[upstream] -= 1
                self._load.replay_finished(upstream)
        elif kind == "replay":
            _, key, outcome, tokens = message
            self._agg.replay_request(key, outcome, tokens)
        elif kind == "fold":  # terminal: compared
            compared = message[1]
            self._ended((compared.context.upstream, compared.context.model_name))
            self._agg.record(compared)
        elif kind == "count":  # terminal: every replay failed, or the trial raised
            _, key, what = message
            self._ended(key)
            self._agg.count(key, what)
        elif kind == "drop":  # terminal: budget, primary_incomplete, shutdown
            _, key, reason = message
            self._ended(key)
            self._agg.drop(key, reason)
        elif kind == "error":
            self._agg.on_internal_error()
        elif kind == "logprobs":  # (upstream, model), supported
            remember(self._logprobs_ok, tuple(message[1]), message[2])
        elif kind == "stopped":
            self._stopped.set()
        elif kind == "ready":
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
        else:
            raise ValueError(f"unknown message from the shadow worker: {kind!r}")
