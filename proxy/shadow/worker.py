"""The shadow worker process, child side: `python -m proxy.shadow.worker FD`.

Started by proxy.shadow.process.ProcessReplayer with one end of a socket pair as FD. It runs the
same Replayer as the in-process mode, on its own event loop with its own HTTP session, and reports
through the socket: replay outcomes, one terminal message per job (a comparison, failed or a drop
with its reason), failures as internal errors (logged here with their stack, as JSON on stderr), and
the logprobs detection. The load a replay meets is asked of the proxy, which alone knows its
in-flight requests. The child exits when told to stop or when the proxy's end closes.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import sys
from typing import Any

from estimator.model import Run
from estimator.online import OnlineEstimator
from proxy.logs import configure_logging
from proxy.shadow.aggregator import compare_trial, online_config
from proxy.shadow.config import ShadowConfig
from proxy.shadow.process import Channel, JobSpec, WorkerInit
from proxy.shadow.replayer import Replayer
from proxy.shadow.sampling import Sampler
from proxy.shadow.transport import UpstreamTransport
from proxy.shadow.view import Key
from proxy.tap import RequestInfo
from proxy.upstreams import Upstreams, new_session


class RemoteSink:
    """proxy.shadow.replayer.TrialSink: compares here, reports to the proxy's Aggregator."""

    def __init__(self, channel: Channel, config: ShadowConfig, hash_key: bytes) -> None:
        self._channel = channel
        self._config = config
        self._hash_key = hash_key
        self._comparer = OnlineEstimator(online_config(config))  # only compare(): never updated

    def count(self, key: Key, what: str) -> None:
        self._channel.send(("count", key, what))

    def drop(self, key: Key, reason: str) -> None:
        self._channel.send(("drop", key, reason))

    def replay_request(self, key: Key, outcome: str, tokens: int = 0) -> None:
        self._channel.send(("replay", key, outcome, tokens))

    async def fold(self, request: RequestInfo, runs: tuple[Run, ...], load: int) -> None:
        # This loop serves replays only: comparing on it (≈ 0.6 ms) holds up nothing of the proxy's.
        compared = compare_trial(
            self._comparer.compare, self._config, self._hash_key, request, runs, load
        )
        self._channel.send(("fold", compared))

    def on_internal_error(self) -> None:
        self._channel.send(("error",))


class RemoteLoad:
    """proxy.shadow.replayer.ReplayLoad: the proxy's LoadTracker, one round trip per replay."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._ids = itertools.count()
        self._waiting: dict[int, asyncio.Future[int]] = {}

    async def acquire(self, upstream: str) -> int:
        rid = next(self._ids)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = future
        self._channel.send(("acquire", rid, upstream))
        try:
            return await future
        except asyncio.CancelledError:
            self._channel.send(("release", upstream))  # the proxy counted it in flight
            raise
        finally:
            self._waiting.pop(rid, None)

    def release(self, upstream: str) -> None:
        self._channel.send(("release", upstream))

    def answer(self, rid: int, load: int) -> None:
        future = self._waiting.get(rid)
        if future is not None and not future.done():
            future.set_result(load)


class _Child:
    """The child's side of the channel: jobs in, the proxy's load answers in, stop."""

    def __init__(self) -> None:
        self.init: asyncio.Future[WorkerInit] = asyncio.get_running_loop().create_future()
        self.stop = asyncio.Event()
        self.replayer: Replayer | None = None
        self.load: RemoteLoad | None = None
        self.channel: Channel | None = None

    def failed(self) -> None:  # a message this side failed to handle (logged with its stack)
        if self.channel is not None:
            self.channel.send(("error",))

    def handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "job" and self.replayer is not None:
            spec: JobSpec = message[1]
            self.replayer.submit(spec.job())
        elif kind == "load" and self.load is not None:
            self.load.answer(message[1], message[2])
        elif kind == "init" and not self.init.done():
            self.init.set_result(message[1])
        elif kind == "stop":
            self.stop.set()


async def serve(sock: socket.socket) -> None:
    child = _Child()
    _, channel = await asyncio.get_running_loop().create_connection(
        lambda: Channel(child.handle, child.failed), sock=sock
    )
    child.channel = channel
    done, _ = await asyncio.wait((child.init, channel.closed), return_when=asyncio.FIRST_COMPLETED)
    if child.init not in done:
        return  # the proxy went away before saying anything
    init = child.init.result()
    configure_logging(init.config.log_level)
    if init.nice:
        os.nice(init.nice)  # background work: the kernel serves the proxy's primaries first
    shadow = init.config.shadow_config
    session = new_session()
    upstreams = Upstreams(init.config, session)
    child.load = RemoteLoad(channel)
    child.replayer = replayer = Replayer(
        shadow,
        UpstreamTransport(lambda: upstreams, init.config.replay_keys),
        Sampler(shadow),  # the token budget and replay delays live here; the coin flip does not
        child.load,
        RemoteSink(channel, shadow, init.hash_key),
        queue_size=0,  # unbounded here: the proxy bounds what it sends
    )
    replayer.on_logprobs_detected = lambda upstream, ok: channel.send(("logprobs", upstream, ok))
    await replayer.start()
    channel.send(("ready",))
    stop = asyncio.ensure_future(child.stop.wait())
    try:
        # Until told to stop, or until the proxy's end closes (nobody left to report to).
        await asyncio.wait((stop, channel.closed), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        await replayer.stop()  # trials in progress: failed; still queued: dropped as shutdown
        channel.send(("stopped",))
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
