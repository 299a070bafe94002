"""What one client can make the proxy hold is bounded: a sampled response is relayed as it arrives
and its shadow capture stops at TEE_MAX_BYTES; a request body must arrive within
`client_body_timeout_seconds`; a response write waits at most `client_write_timeout_seconds` for a
client that does not read; at most `max_connections` client connections are open. Loopback only."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from proxy.app import IN_FLIGHT, make_app, make_runner
from proxy.config import build_config
from proxy.forward import TEE_MAX_BYTES
from proxy.tap import Exchange, RequestInfo, TapPlan

BIG = TEE_MAX_BYTES + 4 * 1024 * 1024
PIECE = 1024 * 1024


class Recording:
    """A tap that samples every request and records the finished exchanges."""

    def __init__(self) -> None:
        self.exchanges: list[Exchange] = []

    def plan(self, request: RequestInfo) -> TapPlan | None:
        return TapPlan(token="t")

    def complete(self, exchange: Exchange) -> None:
        self.exchanges.append(exchange)


class Big:
    """An upstream answering chat completions with `size` bytes of JSON-ish body, sent in 1 MiB
    pieces; with `gate`, the last piece waits for it."""

    def __init__(self, size: int, gate: asyncio.Event | None = None) -> None:
        self.size = size
        self.gate = gate
        self.cancelled = asyncio.Event()

    def body(self) -> bytes:
        return bytes((i * 7) % 251 for i in range(256)) * (self.size // 256)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        data = self.body()
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = len(data)
        await resp.prepare(request)
        try:
            for start in range(0, len(data), PIECE):
                if start + PIECE >= len(data) and self.gate is not None:
                    await self.gate.wait()
                await resp.write(data[start : start + PIECE])
            await resp.write_eof()
        except (asyncio.CancelledError, ConnectionResetError):
            self.cancelled.set()
            raise
        return resp


@contextlib.asynccontextmanager
async def _stack(
    handler: Any, tap: Any = None, **top: Any
) -> AsyncIterator[tuple[int, web.Application]]:
    up_app = web.Application()
    up_app.router.add_route("*", "/v1/{tail:.*}", handler)
    up = web.AppRunner(up_app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
    await up.setup()
    await web.TCPSite(up, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{up.addresses[0][1]}/v1"
    config = build_config({"upstreams": [{"name": "up", "base_url": url}], **top}, {})
    app = make_app(config.model_copy(update={"drain_seconds": 1.0}), tap=tap)
    runner = make_runner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield runner.addresses[0][1], app
    finally:
        await runner.cleanup()
        await up.cleanup()


CHAT = {"model": "m", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}


async def test_a_sampled_response_is_relayed_as_it_arrives_and_its_capture_is_bounded() -> None:
    gate = asyncio.Event()
    big, tap = Big(BIG, gate), Recording()
    async with _stack(big.handle, tap) as (port, _), aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        # The upstream holds its last piece: the client still gets the head and everything
        # before it (a proxy that buffered the body first would send nothing).
        try:
            async with asyncio.timeout(10):
                r = await http.post(url, json=CHAT)
                head = await r.content.readexactly(BIG - PIECE)
        finally:
            gate.set()
        assert r.status == 200
        async with r:
            rest = await r.read()
        assert head + rest == big.body()
        (exchange,) = tap.exchanges
        assert exchange.truncated and exchange.response_body is None  # not kept: too large
        small = Big(PIECE // 2)
    async with _stack(small.handle, tap) as (port, _), aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=CHAT) as r:
            assert await r.read() == small.body()
        exchange = tap.exchanges[-1]
        assert not exchange.truncated and exchange.response_body == small.body()  # kept whole


async def _handle_ok(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=b'{"ok": true}', content_type="application/json")


async def test_a_request_body_that_arrives_too_slowly_gets_408() -> None:
    async with _stack(_handle_ok, client_body_timeout_seconds=1, client_keepalive_seconds=10) as (
        port,
        _,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{"
        )
        started = time.monotonic()

        async def dribble() -> None:
            with contextlib.suppress(ConnectionError):
                for _ in range(100):
                    await asyncio.sleep(0.1)
                    writer.write(b" ")
                    await writer.drain()

        trickle = asyncio.create_task(dribble())
        try:
            async with asyncio.timeout(8):
                response = await reader.read()  # the proxy answers and closes
        finally:
            trickle.cancel()
            writer.close()
        elapsed = time.monotonic() - started
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), head
    assert orjson.loads(body)["error"]["code"] == "request_timeout"
    assert 0.9 < elapsed < 4, elapsed


async def test_a_client_that_never_reads_is_let_go_after_the_write_timeout() -> None:
    big = Big(64 * PIECE)
    async with _stack(big.handle, client_write_timeout_seconds=1) as (port, app):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        _, writer = await asyncio.open_connection(sock=sock)
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 13\r\n\r\n{"model":"m"}'
        )
        started = time.monotonic()
        try:  # never read: the proxy's writes stall once the socket buffers are full
            async with asyncio.timeout(10):
                await big.cancelled.wait()  # the upstream request was cancelled
            for _ in range(100):  # ... and the proxy let go of the request
                if not app[IN_FLIGHT].total():
                    break
                await asyncio.sleep(0.05)
            assert app[IN_FLIGHT].total() == 0
            assert time.monotonic() - started < 8
        finally:
            writer.close()


async def test_connections_over_the_cap_get_503_and_the_rest_are_served() -> None:
    async with _stack(_handle_ok, max_connections=4) as (port, _):
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
        await asyncio.sleep(0.1)  # accepted by the server
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        async with asyncio.timeout(5):
            response = await reader.read()
        writer.close()
        head, _, body = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503"), head
        assert orjson.loads(body)["error"]["code"] == "too_many_connections"
        # A held connection is served, and one closed makes room for a new one.
        r0, w0 = held[0]
        w0.write(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        async with asyncio.timeout(5):
            assert (await r0.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        for _, w in held:
            w.close()
        await asyncio.sleep(0.1)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(5):
            assert (await reader.read()).startswith(b"HTTP/1.1 200")
        writer.close()
