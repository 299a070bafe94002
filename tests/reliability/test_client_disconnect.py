"""Clients that go away or dawdle, on raw loopback sockets (the openai SDK cannot misbehave):
a disconnect before the response head or mid-stream cancels the upstream request, leaks no fd or
task, counts exactly one 499, and the next request works; a request head sent one byte at a time
and idle keep-alive connections are closed after the runner's keep-alive timeout while the proxy
keeps serving."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable

import openai
from aiohttp import web

from proxy.app import IN_FLIGHT, make_app, make_runner
from proxy.config import DEFAULT_CLIENT_KEEPALIVE
from tests.proxy.fakes import FakeUpstream, Stack, proxy_stack
from tests.proxy.test_forwarding import sample, single

CHAT = (
    b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": %s}'
)  # fmt: skip


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _request(stream: bool, fault: str = "") -> bytes:
    body = CHAT % (b"true" if stream else b"false")
    extra = f"x-fault: {fault}\r\n".encode() if fault else b""
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + extra
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


async def until(check: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def _sdk_call(stack: Stack) -> str:
    client = openai.AsyncOpenAI(base_url=stack.proxy_url + "/v1", api_key="k", max_retries=0)
    try:
        chat = await client.chat.completions.create(model="m", messages=[])
        return chat.choices[0].message.content or ""
    finally:
        await client.close()


async def _baseline(stack: Stack) -> tuple[int, int]:
    """Warm pools and lazy imports with one real request, then count fds and tasks."""
    assert await _sdk_call(stack) == "Héllo"
    await asyncio.sleep(0.1)
    return _fds(), len(asyncio.all_tasks())


async def _nothing_leaked(stack: Stack, fds: int, tasks: int) -> None:
    await until(lambda: stack.app[IN_FLIGHT].get("up") == 0)
    # The cancelled upstream connection is closed, not pooled: never more than before.
    await until(lambda: _fds() <= fds and len(asyncio.all_tasks()) <= tasks)
    labels = {"route": "chat", "model_name": "m", "upstream": "up", "status": "499"}
    assert sample(stack.app, "tbg_requests_total", **labels) == 1
    assert await _sdk_call(stack) == "Héllo"  # the next request works


async def _port(stack: Stack) -> int:
    return int(stack.proxy_url.rsplit(":", 1)[1])


async def test_disconnect_before_the_response_head_cancels_the_upstream() -> None:
    fake = FakeUpstream()
    async with proxy_stack(single(), [fake]) as stack:
        fds, tasks = await _baseline(stack)
        fake.started.clear()
        _, writer = await asyncio.open_connection("127.0.0.1", await _port(stack))
        writer.write(_request(stream=False, fault="hold"))  # the upstream never answers
        await writer.drain()
        async with asyncio.timeout(5):
            await fake.started.wait()
        writer.transport.abort()  # RST, not even a FIN: the rudest client
        async with asyncio.timeout(5):
            await fake.cancelled.wait()
        await _nothing_leaked(stack, fds, tasks)


async def test_disconnect_mid_stream_cancels_the_upstream() -> None:
    fake = FakeUpstream(gate=asyncio.Event())  # holds the stream after its first event
    async with proxy_stack(single(), [fake]) as stack:
        fds, tasks = await _baseline(stack)
        reader, writer = await asyncio.open_connection("127.0.0.1", await _port(stack))
        writer.write(_request(stream=True))
        await writer.drain()
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head
            assert b"data: " in await reader.readuntil(b"\n\n")  # the first event went through
        writer.close()
        async with asyncio.timeout(5):
            await fake.cancelled.wait()
        await _nothing_leaked(stack, fds, tasks)


# -- slow and idle clients -------------------------------------------------------------------------

KEEPALIVE = 1.0  # the tests' keep-alive timeout; production's default is DEFAULT_CLIENT_KEEPALIVE


@contextlib.asynccontextmanager
async def _short_keepalive() -> AsyncIterator[tuple[int, FakeUpstream, web.AppRunner]]:
    fake = FakeUpstream()
    async with proxy_stack(single(), [fake]):  # only for the fake upstream's URL and lifecycle
        # Through the config field, as `client_keepalive_seconds:` in a file would set it.
        config = single()([fake.url]).model_copy(update={"client_keepalive_seconds": KEEPALIVE})
        runner = make_runner(make_app(config))
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            yield runner.addresses[0][1], fake, runner
        finally:
            await runner.cleanup()


async def _closed_after(reader: asyncio.StreamReader, limit: float) -> float:
    started = time.monotonic()
    async with asyncio.timeout(limit):
        while await reader.read(65536):
            pass
    return time.monotonic() - started


async def _serves(port: int) -> None:
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0)
    try:
        chat = await client.chat.completions.create(model="m", messages=[])
        assert chat.choices[0].message.content == "Héllo"
    finally:
        await client.close()


async def test_a_request_head_sent_byte_by_byte_is_cut_off_after_the_keepalive_timeout() -> None:
    assert 10 <= DEFAULT_CLIENT_KEEPALIVE <= 300  # the documented production bound
    async with _short_keepalive() as (port, fake, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = _request(stream=False)
        started = time.monotonic()

        async def dribble() -> None:  # one byte every 50 ms: the head would take ≈ 10 s
            with contextlib.suppress(ConnectionError):
                for i in range(len(head)):
                    writer.write(head[i : i + 1])
                    await writer.drain()
                    await asyncio.sleep(0.05)

        sender = asyncio.create_task(dribble())
        await _serves(port)  # the proxy serves others meanwhile
        await _closed_after(reader, KEEPALIVE + 4.0)
        elapsed = time.monotonic() - started
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        writer.close()
        # Dribbling bytes does not extend the timer; closed within the bound, not by our timeout.
        assert KEEPALIVE * 0.9 <= elapsed < KEEPALIVE + 2.5, elapsed
        assert len(fake.requests) == 1  # only _serves reached the upstream
        await _serves(port)


async def test_idle_keepalive_connections_are_closed_while_the_proxy_keeps_serving() -> None:
    async with _short_keepalive() as (port, _, _):
        fds = _fds()
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(100)]
        # 10 more that finished a request and stay open for keep-alive.
        for _, writer in idle[:10]:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        for reader, _ in idle[:10]:
            async with asyncio.timeout(5):
                assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        await _serves(port)
        assert _fds() >= fds + 200  # both ends of each idle connection live in this process
        closed = await asyncio.gather(*(_closed_after(r, KEEPALIVE + 4.0) for r, _ in idle))
        assert max(closed) < KEEPALIVE + 2.5, max(closed)
        for _, writer in idle:
            writer.close()
        await _serves(port)
        await until(lambda: _fds() <= fds + 4)  # at most the pooled upstream connection's pair
