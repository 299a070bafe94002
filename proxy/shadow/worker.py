"""The Worker stage: replays each Job against the same upstream and compares the runs.

The same code in both modes (proxy.shadow.executor picks where it runs): `max_concurrent` tasks take
Jobs off an unbounded queue (the proxy side bounds what it sends), replay them (timeouts, the
per-upstream logprobs detection, the token budget and delays), compare primary and replays, and
send Outcomes back, exactly one terminal outcome per Job. It never waits for the proxy: each replay
says when it starts and ends (`ReplayStarted`, `ReplayDone`), and the proxy, which alone knows its
primaries in flight, takes the load the replay meets and files the trial under its load bucket.

Run as `python -m proxy.shadow.worker FD`, it is the shadow worker process: FD is its end of the
socket pair to the proxy; it exits when told to stop or when the proxy's end closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import Protocol

import orjson

from estimator.builders import BuildError
from estimator.model import Run
from estimator.online import OnlineEstimator
from proxy.logs import configure_logging
from proxy.shadow.canary import canary_compared
from proxy.shadow.capability import Capabilities, logprobs_key
from proxy.shadow.channel import Channel
from proxy.shadow.classes import with_prompt_tokens
from proxy.shadow.config import ShadowConfig
from proxy.shadow.fingerprint_wire import FingerprintReader
from proxy.shadow.load import MetricsFetcher
from proxy.shadow.messages import (
    Dropped,
    Failed,
    FromWorker,
    Init,
    InternalError,
    Job,
    LogprobsLearned,
    Ready,
    ReplayDone,
    ReplayStarted,
    Stop,
    Stopped,
    ToWorker,
)
from proxy.shadow.routes import ROUTES
from proxy.shadow.sampling import ReplayBudget
from proxy.shadow.state import online_config
from proxy.shadow.transport import UpstreamTransport
from proxy.shadow.trial import (
    comparable_runs,
    compare_trial,
    primary_run,
    replay_length,
    usage_tokens,
)
from proxy.shadow.wire import client_wants_logprobs, replay_body
from proxy.tap import RequestInfo
from proxy.tracing import shadow_tracing
from proxy.upstreams import Upstreams, new_session

log = logging.getLogger("tbg.shadow")

ROUTE_PATHS: Mapping[str, str] = {name: r.path for name, r in ROUTES.items()}
Send = Callable[[FromWorker], None]


class ReplayTransport(MetricsFetcher, Protocol):
    """How replays reach an upstream: the one upstream pool, its time limits and per-upstream auth."""

    async def post_json(
        self,
        upstream: str,
        path: str,
        body: bytes,
        client_headers: Mapping[str, str],
        timeout_s: float,
        pod: str | None = None,
    ) -> tuple[int, bytes]:
        """POST `body` to <base_url><path>; returns (status, body). Raises on I/O errors.
        `pod`: the primary's address of a discovered upstream, sent there where it still is."""
        ...


class Worker:
    """Replays and compares: takes Jobs through `handle`, sends outcomes to `send`, never waits for
    an answer.

    `compare_in_thread`: inline (on the proxy's loop) the comparison, the heavy part (trie walk and
    grid likelihood), runs in a worker thread; in the worker process its loop serves replays only.
    """

    def __init__(
        self,
        config: ShadowConfig,
        transport: ReplayTransport,
        send: Send,
        hash_key: bytes,
        *,
        compare_in_thread: bool,
    ) -> None:
        self._config = config
        # OpenTelemetry spans of trials, replays and comparisons (no-op unless shadow.tracing).
        self._tracing = shadow_tracing(config)
        self._transport = self._tracing.transport(transport)
        self._send = send
        self._hash_key = hash_key
        self._in_thread = compare_in_thread
        self._comparer = OnlineEstimator(online_config(config))  # only compare(): never updated
        self._budget = ReplayBudget(config)
        self._capabilities = Capabilities(config)
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._fingerprints = FingerprintReader()  # backend fingerprints of replays in progress

    def handle(self, job: Job) -> None:
        self._queue.put_nowait(job)

    def _emit(self, outcome: Dropped | Failed | LogprobsLearned) -> None:
        self._tracing.outcome(outcome)
        self._send(outcome)

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name=f"tbg-shadow-worker-{i}")
            for i in range(self._config.max_concurrent)
        ]

    async def stop(self) -> None:
        """Cancel the tasks (a trial in progress ends failed), then end the jobs still queued:
        sampled, never replayed (`shutdown`)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        while not self._queue.empty():
            job = self._queue.get_nowait()
            self._emit(Dropped(job.key, "shutdown", job.id))

    async def _run(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                request = job.request()
                with self._tracing.trial(request):
                    await self._trial(job, request)
            except asyncio.CancelledError:
                self._emit(Failed(job.key, job.id))
                raise
            except Exception:  # a bug here must cost one trial, never the worker
                log.exception("shadow trial failed")  # with its stack (proxy.logs)
                self._emit(Failed(job.key, job.id))
                self._send(InternalError())
            finally:
                self._fingerprints.forget(job.id)

    async def _trial(self, job: Job, request: RequestInfo) -> None:
        try:
            primary = primary_run(job)
        except (BuildError, orjson.JSONDecodeError, ValueError) as exc:
            log.info("primary not comparable: %s", type(exc).__name__)
            self._emit(Dropped(job.key, "primary_incomplete", job.id))
            return
        prompt_tokens, completion_tokens = usage_tokens(job)
        length = replay_length(primary, completion_tokens, request.body)
        cost = self._config.replays * (length + (prompt_tokens or 0))
        if not self._budget.spend_tokens(request.model_name, cost):
            self._emit(Dropped(job.key, "budget", job.id))
            return
        if job.target is not None:  # a canary trial: replayed on the canary (proxy.shadow.canary)
            request = replace(request, upstream=job.target.upstream)
        replays: list[Run] = []
        seconds: list[float] = []  # each answered replay's latency, for a canary trial
        attempts = itertools.count()
        for _ in range(self._config.replays):
            delay = self._budget.delay()
            if delay > 0:
                await asyncio.sleep(delay)
            started = time.monotonic()
            run = await self._replay(job, request, length, attempts)
            if run is not None:
                replays.append(run)
                seconds.append(time.monotonic() - started)
        if not replays:
            self._emit(Failed(job.key, job.id))
            return
        if job.target is not None:
            args_c = (self._comparer.compare, self._hash_key, job, request.model_name, primary,
                      tuple(replays), tuple(seconds), self._config.decision_fields)  # fmt: skip
            if self._in_thread:
                compared = await asyncio.to_thread(canary_compared, *args_c)
            else:
                compared = canary_compared(*args_c)
            self._send(compared)
            self._tracing.outcome(compared)
            return
        runs = comparable_runs((primary, *replays))
        with self._tracing.compare(runs, job.load_at_start):
            compare = self._comparer.compare
            request_class = with_prompt_tokens(job.request_class, prompt_tokens)
            # the runs as captured, primary first, go along for the decisions (proxy.shadow.trial)
            args = (compare, self._config, self._hash_key, job.id, request, runs, request_class,
                    (primary, *replays))  # fmt: skip
            if self._in_thread:
                compared = await asyncio.to_thread(compare_trial, *args)
            else:
                compared = compare_trial(*args)
            fingerprint = self._fingerprints.take(job.id, job.stream, job.response_body, job.events)
            compared = replace(compared, fingerprint=fingerprint)
            self._send(compared)
        self._tracing.outcome(compared)

    async def _replay(
        self,
        job: Job,
        request: RequestInfo,
        length: int,
        attempts: Iterator[int],
        logprobs: bool | None = None,
    ) -> Run | None:
        upstream = request.upstream
        lkey = logprobs_key(request)
        detecting = self._capabilities.unknown(lkey)
        ask = self._capabilities.logprobs(lkey) is not False if logprobs is None else logprobs
        body = replay_body(
            request.route,
            request.body,
            max_tokens=length,
            logprobs_k=self._config.top_logprobs if ask else None,
        )
        attempt = next(attempts)
        pod = job.pod if job.target is None else None  # the primary's pod is not the canary's
        self._send(ReplayStarted(job.id, attempt, upstream, pod))
        try:
            status, payload = await self._transport.post_json(
                upstream,
                ROUTE_PATHS[request.route],
                body,
                request.headers,
                self._config.replay_timeout_seconds,
                **({"pod": pod} if pod is not None else {}),  # only when it has one
            )
        except Exception as exc:  # refused, reset, timeout: a failed replay, never the client's
            log.warning("replay to %s failed: %s", upstream, type(exc).__name__, exc_info=exc)
            self._send(ReplayDone(job.id, attempt, job.key, "error"))
            return None
        except BaseException:  # cancelled: no longer in flight, and no replay request counted
            self._send(ReplayDone(job.id, attempt, job.key, None))
            raise
        if status != 200 and ask and detecting:
            # Refused (400) or failed (500, ...) asking for logprobs: try once without. If that
            # works, this upstream and model do not do logprobs: ask without from now on.
            self._send(ReplayDone(job.id, attempt, job.key, None))
            run = await self._replay(job, request, length, attempts, logprobs=False)
            if run is not None:
                self._learned(lkey, False)
            return run
        if status != 200:
            self._send(ReplayDone(job.id, attempt, job.key, "error"))
            return None
        try:
            data = orjson.loads(payload)
            run = ROUTES[request.route].run(data)
            self._fingerprints.replay(job.id, data)
        except (orjson.JSONDecodeError, BuildError, ValueError, AttributeError):
            self._send(ReplayDone(job.id, attempt, job.key, "error"))
            return None
        if ask and detecting and not client_wants_logprobs(request.route, request.body):
            # (a replay with the client's own logprobs may have no alternatives: it tells nothing)
            self._learned(lkey, run.top_logprobs is not None)
        usage = data.get("usage") if isinstance(data, dict) else None
        tokens = usage.get("total_tokens", 0) if isinstance(usage, dict) else 0
        self._send(
            ReplayDone(job.id, attempt, job.key, "ok", tokens if isinstance(tokens, int) else 0)
        )
        return run

    def _learned(self, key: tuple[str, str], supported: bool) -> None:
        self._capabilities.learn(key, supported)
        self._emit(LogprobsLearned(key[0], key[1], supported))


# -- the worker process ----------------------------------------------------------------------------
async def serve(sock: socket.socket) -> None:
    """The worker process's side of the boundary: `Init`, then Jobs until `Stop`."""
    loop = asyncio.get_running_loop()
    init: asyncio.Future[Init] = loop.create_future()
    stop = asyncio.Event()
    worker: Worker | None = None

    def handle(message: ToWorker) -> None:
        if isinstance(message, Init):
            if not init.done():
                init.set_result(message)
        elif isinstance(message, Stop):
            stop.set()
        elif worker is not None:
            worker.handle(message)

    def failed() -> None:  # a message this side failed to handle (logged with its stack)
        channel.send(InternalError())

    _, channel = await loop.create_connection(lambda: Channel[ToWorker](handle, failed), sock=sock)
    done, _ = await asyncio.wait((init, channel.closed), return_when=asyncio.FIRST_COMPLETED)
    if init not in done:
        return  # the proxy went away before saying anything
    config, hash_key, nice = init.result().config, init.result().hash_key, init.result().nice
    configure_logging(config.log_level)
    if nice:
        os.nice(nice)  # background work: the kernel serves the proxy's primaries first
    session = new_session()
    upstreams = Upstreams(config, session)
    transport = UpstreamTransport(lambda: upstreams, config.replay_keys)
    worker = Worker(
        config.shadow_config, transport, channel.send, hash_key, compare_in_thread=False
    )
    await worker.start()
    channel.send(Ready())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        # Until told to stop, or until the proxy's end closes (nobody left to report to).
        await asyncio.wait((stopping, channel.closed), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        await worker.stop()  # trials in progress: failed; still queued: dropped as shutdown
        channel.send(Stopped())
        await session.close()
        await channel.aclose()


def main(argv: list[str]) -> int:
    # Ctrl-C at a terminal reaches the whole process group: the proxy stops this worker itself
    # (accounting for what it holds), or the worker ends when the proxy's end of the socket closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=int(argv[0]))
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(sock))
    else:
        uvloop.run(serve(sock))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
