"""The shadow path under faults, through the real proxy with shadow replay on (sample rate 1):
replays that fail (only those asking for logprobs; every second one) or are slow never change a
primary's bytes (compared with a direct call to the upstream) nor delay it beyond a budget
(measured against a shadow-off proxy in the same test); a client that disconnects while another
request's replays run cancels its own upstream request only; and sampled = replayed + dropped +
failed holds exactly."""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from proxy.app import make_app, make_runner
from proxy.config import build_config
from proxy.shadow.tap import ShadowTap
from proxy.shadow.wiring import SHADOW
from tests.proxy.fakes import CHAT_BODY, CHAT_EVENTS
from tests.reliability.test_client_disconnect import until
from tests.shadow.conftest import worker_env

REPLAY_DELAY = 1.0  # every replay takes this long: a primary that waited for one would show it
BUDGET = 0.3  # s: allowed median primary slowdown with shadow on, on a loaded 2-core CI box
N = 8
MAX_CONCURRENT = 4  # replay workers
PRIMARY = orjson.dumps(
    {"model": "m", "temperature": 0, "stream": True, "messages": [{"role": "user", "content": "x"}]}
)


@dataclass
class ShadowUpstream:
    """Primaries (streaming) get CHAT_EVENTS; replays (non-streaming) get CHAT_BODY after
    REPLAY_DELAY, or a 500 as `mode` says. Records what it saw."""

    mode: str = "ok"  # ok | fail_logprobs | fail_every_second
    gate: asyncio.Event | None = None  # when set, replays also wait on it
    replays: int = 0
    replay_errors: int = 0
    primaries: int = 0
    cancelled: list[str] = field(default_factory=list)
    hold_primary: asyncio.Event | None = None  # when set, primaries stop after their first event

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body: dict[str, Any] = orjson.loads(await request.read())
        kind = "primary" if body.get("stream") else "replay"
        try:
            if kind == "primary":
                return await self._primary(request)
            return await self._replay(body)
        except asyncio.CancelledError:
            self.cancelled.append(kind)
            raise

    async def _primary(self, request: web.Request) -> web.StreamResponse:
        self.primaries += 1
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i, event in enumerate(CHAT_EVENTS):
            await response.write(event)
            if i == 0 and self.hold_primary is not None:
                await self.hold_primary.wait()
        await response.write_eof()
        return response

    async def _replay(self, body: dict[str, Any]) -> web.Response:
        self.replays += 1
        n = self.replays
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(REPLAY_DELAY)
        fail = (self.mode == "fail_logprobs" and bool(body.get("logprobs"))) or (
            self.mode == "fail_every_second" and n % 2 == 0
        )
        if fail:
            self.replay_errors += 1
            return web.Response(status=500, body=b'{"error": {"message": "boom"}}')
        return web.Response(body=CHAT_BODY, content_type="application/json")


async def _serve(app: web.Application, runner: web.AppRunner | None = None) -> web.AppRunner:
    runner = runner or web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


@contextlib.asynccontextmanager
async def _stacks(
    fake: ShadowUpstream,
) -> AsyncIterator[tuple[str, str, str, ShadowTap, web.AppRunner]]:
    """The upstream, a shadow-off proxy and a shadow-on proxy in front of it (URLs end in /v1)."""
    up_app = web.Application()
    up_app.router.add_post("/v1/chat/completions", fake.handle)
    upstream = await _serve(up_app)
    up_url = f"http://127.0.0.1:{upstream.addresses[0][1]}/v1"
    entry = {"name": "up", "base_url": up_url, "models": ["m"]}
    shadow = {"enabled": True, "sample_rate": 1, "replays": 2, "max_concurrent": MAX_CONCURRENT,
              "replays_per_minute": 1e6, "tokens_per_minute": 1e9}  # fmt: skip
    off_app = make_app(build_config({"upstreams": [entry]}, worker_env()))
    on_app = make_app(build_config({"upstreams": [entry], "shadow": shadow}, worker_env()))
    off, on = await _serve(off_app, make_runner(off_app)), await _serve(on_app, make_runner(on_app))
    try:
        yield (
            up_url,
            f"http://127.0.0.1:{off.addresses[0][1]}/v1",
            f"http://127.0.0.1:{on.addresses[0][1]}/v1",
            on_app[SHADOW],
            upstream,
        )
    finally:
        await on.cleanup()
        await off.cleanup()
        await upstream.cleanup()


async def _primary(http: aiohttp.ClientSession, base: str) -> tuple[bytes, float]:
    started = time.monotonic()
    async with http.post(base + "/chat/completions", data=PRIMARY) as r:
        assert r.status == 200
        data = await r.read()
    return data, time.monotonic() - started


def _exact(tap: ShadowTap) -> dict[str, int]:
    totals = tap.view().totals()
    assert totals["sampled"] == totals["replayed"] + totals["dropped"] + totals["failed"], totals
    return totals


@pytest.mark.parametrize("mode", ["fail_logprobs", "fail_every_second", "ok"])
async def test_failing_or_slow_replays_never_touch_the_primary(mode: str) -> None:
    fake = ShadowUpstream(mode=mode)
    async with _stacks(fake) as (direct, off, on, tap, _), aiohttp.ClientSession() as http:
        await _primary(http, off)  # warm-up (pools, lazy imports); not sampled: shadow is off
        off_s: list[float] = []
        on_s: list[float] = []
        for _ in range(N):
            expected, _ = await _primary(http, direct)
            via_off, t_off = await _primary(http, off)
            via_on, t_on = await _primary(http, on)
            assert via_on == via_off == expected == b"".join(CHAT_EVENTS)
            off_s.append(t_off)
            on_s.append(t_on)
        assert fake.replays > 0  # replays were running, failing or sleeping, meanwhile
        # A primary that waited for even one replay would take ≥ REPLAY_DELAY.
        assert statistics.median(on_s) < statistics.median(off_s) + BUDGET, (on_s, off_s)
        assert max(on_s) < REPLAY_DELAY, on_s
        assert await tap.idle(N * 2 * REPLAY_DELAY + 10)
    totals = _exact(tap)
    assert totals["sampled"] == N and totals["dropped"] == 0, totals
    if mode == "fail_logprobs":
        # A replay failing (500) with logprobs is retried once without; that works, so from then
        # on replays go plain: only those started before that was learned (at most one per
        # concurrent replay) fail, and every trial is compared.
        assert 1 <= fake.replay_errors <= MAX_CONCURRENT < 2 * N, fake.replay_errors
        assert totals["failed"] == 0 and totals["replayed"] == N, totals
    elif mode == "fail_every_second":
        # Half the replays fail; while support is still unknown a failed one is retried plain.
        assert N <= fake.replay_errors <= N + MAX_CONCURRENT, fake.replay_errors
        assert totals["replayed"] >= N // 2, totals
    else:
        assert fake.replay_errors == 0 and totals["replayed"] == N


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_disconnect_while_replays_run_cancels_only_the_primary() -> None:
    fake = ShadowUpstream(gate=asyncio.Event())
    async with _stacks(fake) as (_, _, on, tap, upstream), aiohttp.ClientSession() as http:
        await _primary(http, on)  # sampled; its replays now wait on the gate
        await until(lambda: fake.replays > 0)
        await http.close()
        server = upstream.server
        assert server is not None

        def counts() -> tuple[int, int]:  # minus the upstream side, which lives here too
            n = len(server.connections)
            return _fds() - 2 * n, len(asyncio.all_tasks()) - n

        fds, tasks = counts()
        fake.hold_primary = asyncio.Event()
        port = int(on.rsplit(":", 1)[1].split("/")[0])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
            % len(PRIMARY)
            + PRIMARY
        )
        async with asyncio.timeout(5):
            await reader.readuntil(b"\n\n")  # the head and the first event
        writer.transport.abort()
        await until(lambda: "primary" in fake.cancelled)
        assert fake.cancelled == ["primary"]  # the replay waiting on the gate was not touched
        fake.gate.set()  # type: ignore[union-attr]
        assert await tap.idle(10)
        assert fake.cancelled == ["primary"]
        totals = _exact(tap)
        assert (totals["sampled"], totals["replayed"], totals["dropped"]) == (2, 1, 1), totals
        dropped = {reason: n for (_, _, reason), n in tap.view().dropped.items() if n}
        assert dropped == {"primary_incomplete": 1}
        await until(lambda: counts()[0] <= fds and counts()[1] <= tasks)
        fake.hold_primary = None
        async with aiohttp.ClientSession() as again, asyncio.timeout(10):  # the next one works
            data, _ = await _primary(again, on)
            assert data == b"".join(CHAT_EVENTS)
