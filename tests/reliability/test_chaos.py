"""A chaos upstream the test controls byte by byte (raw asyncio server). For each fault the client
gets a clear OpenAI-style error or exactly the upstream's bytes, within the configured timeouts;
afterwards no fd or task is left behind and the next request works."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import openai
import orjson
import pytest

from tests.proxy.fakes import proxy_stack
from tests.proxy.test_forwarding import single

TIMEOUTS = {"connect": 1.0, "first_byte": 0.5, "total": 2.0}
BIG = 50 * 1024 * 1024
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":")[1]))


def _head(status: str, ctype: bytes, length: int | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status}".encode(), b"Content-Type: " + ctype, b"Connection: close"]
    if length is not None:
        lines.append(b"Content-Length: %d" % length)
    return b"\r\n".join(lines) + b"\r\n\r\n"


SLOW_BODY_HEAD = b'{"a":'
SSE_GARBAGE = (
    b'data: {"not json\r\n\r\n',
    b"data: \xe2\x98",  # a multi-byte character split across writes
    b"\x83\n\n",
    b"event: x\ndata: [DONE",  # truncated, no final blank line, no [DONE]
)


async def slow_headers(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    await _read_request(r)
    await asyncio.sleep(5)


async def slow_body(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    await _read_request(r)
    w.write(_head("200 OK", b"application/json", 1000) + SLOW_BODY_HEAD)
    for _ in range(50):
        await asyncio.sleep(0.1)
        w.write(b" ")
        await w.drain()


async def reset_mid_stream(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    await _read_request(r)
    w.write(_head("200 OK", b"text/event-stream") + SSE_GARBAGE[0])
    await w.drain()
    await asyncio.sleep(0.3)  # the event is relayed to the client before the reset
    w.transport.abort()


async def burst_503(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    await _read_request(r)
    body = b'{"error": {"message": "overloaded", "type": "server_error", "code": null}}'
    w.write(_head("503 Service Unavailable", b"application/json", len(body)) + body)
    await w.drain()


async def garbage_sse(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    await _read_request(r)
    w.write(_head("200 OK", b"text/event-stream"))
    for piece in SSE_GARBAGE:
        w.write(piece)
        await w.drain()
        await asyncio.sleep(0.01)


async def invalid_json_200(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    await _read_request(r)
    body = b'{"choices": [ nope'
    w.write(_head("200 OK", b"application/json", len(body)) + body)
    await w.drain()


async def fifty_megabytes(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    await _read_request(r)
    w.write(_head("200 OK", b"application/json", BIG))
    chunk = b"x" * (1024 * 1024)
    for _ in range(BIG // len(chunk)):
        w.write(chunk)
        await w.drain()


async def never_closes(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    await _read_request(r)
    w.write(_head("200 OK", b"text/event-stream") + b'data: {"choices": []}\n\n')
    await w.drain()
    await asyncio.sleep(60)


@contextlib.asynccontextmanager
async def chaos(script: Script) -> AsyncIterator[tuple[str, set[asyncio.StreamWriter]]]:
    """Serve `script` per connection; yields the base URL and the server-side connections still
    open (they live in this process too, so fd counts subtract them)."""
    live: set[asyncio.StreamWriter] = set()
    handlers: set[asyncio.Task[None]] = set()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        live.add(w)
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await script(r, w)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            w.close()
            live.discard(w)
            handlers.discard(task)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1", live
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


CASES: list[tuple[str, Script, bool]] = [
    ("slow_headers", slow_headers, False),
    ("slow_body", slow_body, False),
    ("reset_mid_stream", reset_mid_stream, True),
    ("burst_503", burst_503, False),
    ("garbage_sse", garbage_sse, True),
    ("invalid_json_200", invalid_json_200, False),
    ("fifty_megabytes", fifty_megabytes, False),
    ("never_closes", never_closes, True),
]


async def test_refused_connection_is_a_502_and_nothing_leaks() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    config = single(upstream={"timeouts": TIMEOUTS})
    async with proxy_stack(lambda _: config([f"http://127.0.0.1:{port}/v1"])) as stack:
        client = openai.AsyncOpenAI(base_url=stack.proxy_url + "/v1", api_key="k", max_retries=0)
        for _ in range(3):
            with pytest.raises(openai.InternalServerError) as info:
                await client.chat.completions.create(model="m", messages=[])
            assert info.value.status_code == 502
        await client.close()


UPSTREAM_BYTES: dict[str, bytes] = {
    "reset_mid_stream": SSE_GARBAGE[0],
    "burst_503": b'{"error": {"message": "overloaded", "type": "server_error", "code": null}}',
    "garbage_sse": b"".join(SSE_GARBAGE),
    "invalid_json_200": b'{"choices": [ nope',
    "never_closes": b'data: {"choices": []}\n\n',
    "slow_body": SLOW_BODY_HEAD + b" " * 50,
}


@pytest.mark.parametrize(("name", "script", "stream"), CASES, ids=[c[0] for c in CASES])
async def test_chaos_upstream(name: str, script: Script, stream: bool) -> None:
    config = single(upstream={"timeouts": TIMEOUTS})
    async with chaos(script) as (url, live), proxy_stack(lambda _: config([url]), []) as stack:
        await _exchange(stack.proxy_url, stream)  # warm-up: pools, lazy imports
        await asyncio.sleep(0.1)
        fds, tasks = _fds() - len(live), len(asyncio.all_tasks()) - len(live)
        for _ in range(3):  # a burst; every one answered the same way
            status, data, elapsed = await _exchange(stack.proxy_url, stream)
            assert elapsed < TIMEOUTS["total"] + 1.5, (name, elapsed)  # no hang
            if name == "slow_headers":
                assert (status, _code(data)) == (504, "upstream_timeout")
            elif name == "fifty_megabytes":
                assert status == 200 and len(data) == BIG
                assert hashlib.sha256(data).digest() == hashlib.sha256(b"x" * BIG).digest()
            else:
                expected = UPSTREAM_BYTES[name]
                assert status == (503 if name == "burst_503" else 200)
                if name == "slow_body":
                    # Cut at the total timeout (2 s); by 1 s '{"a":' and 10 spaces were sent,
                    # and each of them reached the client unaltered.
                    assert len(data) >= len(SLOW_BODY_HEAD) + 10, (name, data)
                    assert data == expected[: len(data)], (name, data)
                else:  # what was sent before the reset or the stall, all of it and no more
                    assert data == expected, (name, data)
        await asyncio.sleep(0.2)
        assert _fds() - len(live) <= fds, (name, fds, _fds(), len(live))
        assert len(asyncio.all_tasks()) - len(live) <= tasks, (name, tasks)
        async with (  # the proxy itself still answers
            aiohttp.ClientSession() as http,
            http.get(stack.proxy_url + "/healthz") as r,
        ):
            assert r.status == 200


def _code(body: bytes) -> str:
    error = orjson.loads(body)["error"]
    assert {"message", "type", "code"} <= set(error)
    return str(error["code"])


async def _exchange(proxy: str, stream: bool) -> tuple[int, bytes, float]:
    body = b'{"model": "m", "messages": [], "stream": %s}' % (b"true" if stream else b"false")
    started = time.monotonic()
    async with (
        aiohttp.ClientSession() as http,
        http.post(proxy + "/v1/chat/completions", data=body) as r,
    ):
        data = bytearray()
        with contextlib.suppress(aiohttp.ClientPayloadError):
            async for chunk in r.content.iter_any():
                data += chunk
        return r.status, bytes(data), time.monotonic() - started
