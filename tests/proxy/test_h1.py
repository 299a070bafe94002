"""The upstream client (proxy/h1.py) against a raw upstream the test writes byte by byte, and the
proxy's relay through it."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx
import pytest

from proxy.h1 import ConnectFailed, Endpoint, Limits, Pool, ProtocolError, Reset, request_head
from proxy.upstreams import endpoint_of

from .fakes import CHAT_BODY, CHAT_EVENTS, proxy_stack
from .test_forwarding import MESSAGES, sample, single

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
LIMITS = Limits(connect=1.0, first_byte=0.5, total=2.0)


async def _request(reader: asyncio.StreamReader) -> bytes:
    """One request off the wire (head + Content-Length body); b"" when the client closed."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return b""
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


@contextlib.asynccontextmanager
async def upstream(script: Script) -> AsyncIterator[tuple[Endpoint, list[bytes], list[int]]]:
    """A raw server running `script` per connection; yields its endpoint, the requests it read
    (scripts append them) and a one-element connection counter."""
    seen: list[bytes] = []
    conns = [0]
    tasks: set[asyncio.Task[None]] = set()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        conns[0] += 1
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await script(r, w)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            w.close()
            tasks.discard(task)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield Endpoint("127.0.0.1", port, b"127.0.0.1:%d" % port), seen, conns
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


def _post(endpoint: Endpoint, body: bytes = b'{"a": 1}') -> bytes:
    head = request_head(
        "POST", "/v1/chat/completions", endpoint, [(b"Content-Type", b"application/json")], body
    )
    return head + body


def _serve(*answers: bytes, seen: list[bytes] | None = None) -> Script:
    """Answer each request on a connection with the next of `answers`, then keep it open."""

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        for answer in answers:
            req = await _request(r)
            if not req:
                return
            if seen is not None:
                seen.append(req)
            w.write(answer)
            await w.drain()
        await r.read()

    return script


SIZED = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{"x":1}'


async def test_request_head_is_one_write_and_keep_alive_reuses_the_connection() -> None:
    seen: list[bytes] = []
    async with upstream(_serve(SIZED, SIZED, seen=seen)) as (endpoint, _, conns):
        pool = Pool()
        for _ in range(2):
            resp = await pool.request(endpoint, LIMITS, _post(endpoint), "POST")
            assert (resp.status, resp.reason, resp.content_type) == (200, "OK", "application/json")
            assert resp.content_length == 7 and resp.complete
            assert await resp.read() == b'{"x":1}'
            resp.release()
        assert conns == [1]
        assert seen[0] == (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b'Content-Length: 8\r\n\r\n{"a": 1}' % endpoint.host_header
        )
        await pool.close()


async def test_chunked_bodies_are_decoded_and_bodies_until_close_end_cleanly() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\ndata:\r\n3\r\n x\n\r\n0\r\n\r\n"
    )

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _request(r)
        w.write(chunked)
        await _request(r)
        w.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        await w.drain()  # then the connection closes: that ends the body

    async with upstream(script) as (endpoint, _, conns):
        pool = Pool()
        resp = await pool.request(endpoint, LIMITS, _post(endpoint), "POST")
        assert resp.content_type == "text/event-stream" and resp.content_length is None
        assert await resp.read() == b"data: x\n"
        resp.release()
        resp = await pool.request(endpoint, LIMITS, _post(endpoint), "POST")
        assert await resp.read() == b"all of it"
        resp.release()
        assert conns == [1] and not pool._all  # Connection: close -> not pooled
        await pool.close()


async def test_timeouts_failures_and_protocol_errors() -> None:
    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _request(r)
        await asyncio.sleep(10)

    async def dribble(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nab")
        for _ in range(40):
            await asyncio.sleep(0.1)
            w.write(b"c")

    async def hang_up(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart")
        await w.drain()
        w.transport.abort()

    pool = Pool()
    loop = asyncio.get_running_loop()
    async with upstream(silent) as (endpoint, _, _):
        started = loop.time()
        with pytest.raises(TimeoutError):
            await pool.request(endpoint, LIMITS, _post(endpoint), "POST")
        assert 0.4 < loop.time() - started < 1.0  # the first-byte limit
    async with upstream(dribble) as (endpoint, _, _):
        started = loop.time()
        resp = await pool.request(endpoint, LIMITS, _post(endpoint), "POST")
        got = [await resp.readany(), await resp.readany()]
        with pytest.raises(TimeoutError):
            await resp.read()
        assert b"".join(got).startswith(b"abc")
        assert 1.8 < loop.time() - started < 2.6  # the total limit
        resp.release()
    async with upstream(hang_up) as (endpoint, _, _):
        resp = await pool.request(endpoint, LIMITS, _post(endpoint), "POST")
        with pytest.raises(Reset):
            await resp.read()
        resp.release()
    async with upstream(_serve(b"SMTP ready\r\n\r\n")) as (endpoint, _, _):
        with pytest.raises(ProtocolError):
            await pool.request(endpoint, LIMITS, _post(endpoint), "POST")

    async def no_answer(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _request(r)  # then closes without answering

    async with upstream(no_answer) as (endpoint, _, _):
        with pytest.raises(Reset):
            await pool.request(endpoint, LIMITS, _post(endpoint), "POST")
    closed = Endpoint("127.0.0.1", endpoint.port, endpoint.host_header)  # nothing listens now
    with pytest.raises(ConnectFailed):
        await pool.request(closed, LIMITS, _post(closed), "POST")
    assert not pool._all  # every failed connection was dropped
    await pool.close()


async def test_a_large_body_is_relayed_whole_under_flow_control() -> None:
    size = 8 * 1024 * 1024

    async def big(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // 65536):
            w.write(b"y" * 65536)
            await w.drain()
        await r.read()

    async with upstream(big) as (endpoint, _, _):
        pool = Pool()
        resp = await pool.request(endpoint, LIMITS, _post(endpoint), "POST")
        digest, n, biggest = hashlib.sha256(), 0, 0
        while chunk := await resp.readany():
            await asyncio.sleep(
                0.001
            )  # a slow reader: the connection must pause, not buffer it all
            digest.update(chunk)
            n += len(chunk)
            biggest = max(biggest, len(chunk))
        assert n == size and digest.digest() == hashlib.sha256(b"y" * size).digest()
        assert biggest < 2 * 1024 * 1024  # bounded by the high-water mark, not the body
        resp.release()
        await pool.close()


async def test_idle_connections_closed_by_either_side_are_never_reused() -> None:
    async def once(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _request(r)
        w.write(SIZED)
        await w.drain()
        await asyncio.sleep(0.05)  # then closes the idle keep-alive connection

    async with upstream(once) as (endpoint, _, conns):
        pool = Pool(keepalive_timeout=0.2)
        for _ in range(2):
            resp = await pool.request(endpoint, LIMITS, _post(endpoint), "POST")
            assert await resp.read() == b'{"x":1}'
            resp.release()
            await asyncio.sleep(0.2)
        assert conns[0] == 2
        await pool.close()
    async with upstream(_serve(SIZED, SIZED)) as (endpoint, _, conns):
        pool = Pool(keepalive_timeout=0.2)
        resp = await pool.request(endpoint, LIMITS, _post(endpoint), "POST")
        await resp.read()
        resp.release()
        resp.close()  # after release: must not touch the pooled connection
        assert len(pool._all) == 1
        await asyncio.sleep(0.5)  # the idle sweep closes it
        assert not pool._all
        await pool.close()


# -- the relay ---------------------------------------------------------------------------------


async def test_the_relay_gives_the_upstreams_bytes_statuses_and_errors() -> None:
    make = single(upstream={"timeouts": {"first_byte": 0.3}})
    async with (
        proxy_stack(make) as stack,
        httpx.AsyncClient() as http,
    ):
        url = stack.proxy_url + "/v1/chat/completions"
        body = {"model": "m", "messages": MESSAGES}
        r = await http.post(url, json=body)
        assert r.status_code == 200 and r.content == CHAT_BODY
        async with (
            aiohttp.ClientSession() as s,
            s.post(url, json={**body, "stream": True}) as resp,
        ):
            assert await resp.read() == b"".join(CHAT_EVENTS)
        r = await http.post(url, json=body, headers={"x-fault": "teapot"})
        assert (r.status_code, r.headers["x-custom"]) == (418, "kept")
        assert "keep-alive" not in r.headers
        r = await http.post(url, json=body, headers={"x-fault": "sleep"})
        assert r.status_code == 504
        r = await http.post(url, json=body, headers={"x-fault": "reset"})
        assert r.status_code == 502
        for path in ("/other/p%C3%A4th?q=a+b%2F", "/other/%2F%2Fx/y?u=http://h/"):
            r = await http.get(stack.proxy_url + "/v1" + path)
            direct = await http.get(stack.fakes[0].url + path)
            assert r.status_code == 200 and r.content == direct.content, path
        r = await http.head(stack.proxy_url + "/v1/models")  # a length, and no body
        direct = await http.get(stack.fakes[0].url + "/models")
        assert r.status_code == 200 and r.content == b""
        assert r.headers["content-length"] == str(len(direct.content))
        assert (await http.get(stack.proxy_url + "/v1/models")).content == direct.content
        for kind in ("timeout", "reset"):
            assert sample(stack.app, "tbg_upstream_errors_total", upstream="up", kind=kind) == 1
        seen = stack.fakes[0].requests
        assert seen[0].peer == seen[1].peer  # the connection was kept alive for the stream


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 and its key."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


async def test_tls_upstreams_are_verified(self_signed: tuple[Path, Path]) -> None:
    cert, key = self_signed
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    server = await asyncio.start_server(_serve(SIZED, SIZED), "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        default = endpoint_of(f"https://127.0.0.1:{port}/v1")  # what a config URL gives
        assert default.ssl is not None and default.host_header == b"127.0.0.1:%d" % port
        pool = Pool()
        with pytest.raises(ConnectFailed):  # self-signed: not trusted by the default context
            await pool.request(default, LIMITS, _post(default), "POST")
        trusting = ssl.create_default_context(cafile=str(cert))
        endpoint = Endpoint("127.0.0.1", port, default.host_header, trusting, "127.0.0.1")
        for _ in range(2):
            resp = await pool.request(endpoint, LIMITS, _post(endpoint), "POST")
            assert (resp.status, await resp.read()) == (200, b'{"x":1}')
            resp.release()
        assert len(pool._all) == 1  # kept alive over TLS too
        await pool.close()
    finally:
        server.close()
        await server.wait_closed()
