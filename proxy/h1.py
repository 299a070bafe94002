"""The proxy's one upstream HTTP/1.1 client: a keep-alive pool (asyncio Protocol + httptools).

Every exchange with an upstream goes through it: forwarding, HEAD included (streamed,
`Pool.request`), and the callers that want a whole answer (`Pool.fetch`: the merged /v1/models,
the readiness probes, shadow replays, the upstream /metrics poller).

Why not aiohttp's ClientSession: per proxied request its machinery (ClientRequest, payload
registry, connector bookkeeping, timer contexts, the StreamReader) cost about a quarter of the
proxy's CPU (docs/benchmarks.md). This client does only what the relay needs: the request head and
body go out in one `transport.write`, the response is parsed by httptools (llhttp, in C), and the
decoded body is handed over chunk by chunk as it arrives, with read-side flow control.

Semantics (proxy/forward.py relies on them):
- timeouts (`Limits`): `connect` bounds opening a connection, `first_byte` the wait for the
  response head (connect included), `total` the whole exchange; each raises UpstreamTimeout.
- failures: one tree, UpstreamError, whose `kind` is the `kind` label of
  tbg_upstream_errors_total: UpstreamTimeout ("timeout", also a TimeoutError), ConnectFailed
  ("connect": could not connect), Reset ("reset": connection lost before the response ended),
  ProtocolError ("protocol": unparsable response).
- a response that is not read to its end, or is closed, never returns its connection to the pool:
  the upstream sees the connection close and stops generating.
- a response to HEAD has a length but no body: it ends with its head.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

import httptools
from multidict import CIMultiDict

# Read-side flow control: stop reading the upstream socket while this much body is unread.
_HIGH_WATER = 2**18
_IDLE_SWEEP_SECONDS = 10.0  # at most; sooner with a shorter keep-alive
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


class UpstreamError(Exception):
    """The upstream exchange failed; `kind` names how (the metric's `kind` label)."""

    kind: ClassVar[str] = "protocol"


class UpstreamTimeout(UpstreamError, TimeoutError):
    """A limit of `Limits` ran out (connect, first byte or total)."""

    kind = "timeout"


class ConnectFailed(UpstreamError):
    """No connection could be opened (refused, unreachable, TLS handshake failed); the message is
    the reason (e.g. "Connection refused", "TLS: CERTIFICATE_VERIFY_FAILED")."""

    kind = "connect"


class Reset(UpstreamError):
    """The connection was lost before the response was complete."""

    kind = "reset"


class ProtocolError(UpstreamError):
    """The upstream's bytes are not a valid HTTP/1.1 response."""

    kind = "protocol"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where to connect and what to send as Host: one per upstream, or one per address of an
    upstream discovered from DNS (proxy/endpoints.py: the address's host, the name's Host and SNI)."""

    host: str
    port: int
    host_header: bytes
    ssl: ssl.SSLContext | None = None
    server_hostname: str | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-request time limits in seconds (see the module docstring)."""

    connect: float
    first_byte: float
    total: float | None

    def capped(self, seconds: float) -> Limits:
        """These limits, none longer than `seconds` (the whole exchange within it)."""
        total = seconds if self.total is None else min(self.total, seconds)
        return Limits(min(self.connect, seconds), min(self.first_byte, seconds), total)


@dataclass(frozen=True, slots=True)
class Reply:
    """A whole response, as `Pool.fetch` returns it."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]  # as received
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        """The first value of header `name` (lower case), None when absent."""
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


def request_head(
    method: str,
    target: str,
    endpoint: Endpoint,
    headers: Iterable[tuple[bytes, bytes]],
    body: bytes,
) -> bytes:
    """Request line and headers: Host first, then `headers` as given, then Content-Length."""
    parts = [method.encode("ascii"), b" ", target.encode("ascii"), b" HTTP/1.1\r\nHost: "]
    parts.append(endpoint.host_header)
    parts.append(b"\r\n")
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    if body or method in ("POST", "PUT", "PATCH"):
        parts.append(b"Content-Length: %d\r\n" % len(body))
    parts.append(b"\r\n")
    return b"".join(parts)


class Response:
    """The upstream's response: head fields, then body chunks via `readany()`."""

    __slots__ = (
        "_chunks",
        "_conn",
        "_done",
        "_exc",
        "_headers",
        "_size",
        "_waiter",
        "content_length",
        "content_type",
        "raw_headers",
        "reason",
        "status",
    )

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self.status = 0
        self.reason = ""
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.content_length: int | None = None
        self.content_type = "application/octet-stream"  # aiohttp's default when absent
        self._headers: CIMultiDict[str] | None = None
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._done = False  # the whole message was received
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    @property
    def headers(self) -> CIMultiDict[str]:
        if self._headers is None:
            self._headers = CIMultiDict(
                (k.decode("latin-1"), v.decode("latin-1")) for k, v in self.raw_headers
            )
        return self._headers

    @property
    def complete(self) -> bool:
        """True when the whole body has been received (it may still be unread)."""
        return self._done

    def read_buffered(self) -> bytes:
        """Everything received and not yet read, without waiting."""
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        return data

    async def readany(self) -> bytes:
        """The next bytes of the body as they arrived (b"" at its end); raises on failure."""
        while not self._chunks:
            if self._exc is not None:
                raise self._exc
            if self._done:
                return b""
            self._waiter = self._conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = self.read_buffered()  # a single chunk is returned as is, not copied
        self._conn.resume()
        return data

    async def read(self) -> bytes:
        """The whole (remaining) body."""
        parts = []
        while chunk := await self.readany():
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        """Drop the connection (the upstream stops generating); idempotent."""
        if self._conn.carries(self):  # never a connection already back in the pool
            self._conn.abort()

    def release(self) -> None:
        """Return the connection to the pool if the message ended cleanly, else drop it."""
        self._conn.finish(self)

    # -- fed by the connection --------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > _HIGH_WATER:
            self._conn.pause()
        self._wake()

    def _end(self) -> None:
        self._done = True
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if not self._done and self._exc is None:
            self._exc = exc
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class _Connection(asyncio.Protocol):
    """One keep-alive connection; carries at most one exchange at a time."""

    def __init__(self, pool: Pool, endpoint: Endpoint, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._pool = pool
        self._endpoint = endpoint
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._resp: Response | None = None
        self._head: asyncio.Future[Response] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None
        self._keep_alive = False
        self._paused = False
        self._bodiless = False  # the request was HEAD: the response ends with its head
        self.closed = False
        self.received = False  # any byte of the current response arrived
        self.idle_since = 0.0

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        self._pool.adopt(self)  # known to the pool at once, so close() reaches it even if the
        # request that opened it was cancelled before it could use it

    def data_received(self, data: bytes) -> None:
        resp = self._resp
        if resp is None:  # bytes nobody asked for: the connection cannot be trusted any more
            self.abort()
            return
        self.received = True
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._error(ProtocolError(f"invalid response: {type(exc).__name__}"))

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        resp = self._resp
        if resp is not None and not resp._done:
            if exc is None and self._head is None and self._until_eof():
                resp._end()  # a body delimited by the connection's close ended cleanly
            else:
                self._error(Reset("upstream closed the connection"))
        self._cancel_timer()

    # -- httptools callbacks -----------------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        assert self._resp is not None
        self._resp.reason += status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._resp is not None
        self._resp.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        resp = self._resp
        assert resp is not None
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # interim response (e.g. 100 Continue): wait for the real one
            resp.reason, resp.raw_headers = "", []
            return
        resp.status = status
        self._keep_alive = self._parser.should_keep_alive()
        chunked = False
        for name, value in resp.raw_headers:
            lower = name.lower()
            if lower == b"content-length":
                with contextlib.suppress(ValueError):
                    resp.content_length = int(value)
            elif lower == b"content-type":
                resp.content_type = value.split(b";", 1)[0].strip().lower().decode("latin-1")
            elif lower == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
        if chunked:
            resp.content_length = None
        head, self._head = self._head, None
        if self._bodiless:
            # The parser would wait for a body of content_length bytes. None comes: the message
            # ends here, and `finish` gives the connection a fresh parser for the next one.
            resp._end()
            self._cancel_timer()
        if head is not None and not head.done():
            head.set_result(resp)
        # From here on only the total limit applies; the timer still armed for the head is moved
        # on when it fires (most bodies end before that, and then it is simply cancelled).

    def on_body(self, body: bytes) -> None:
        assert self._resp is not None
        if self._bodiless:  # bytes after a HEAD response: the connection cannot be reused
            self._keep_alive = False
            return
        self._resp._feed(body)

    def on_message_complete(self) -> None:
        resp = self._resp
        if resp is None or resp.status == 0 or resp._done:  # interim, or a HEAD's already ended
            return
        resp._end()
        self._cancel_timer()

    # -- driven by the pool and the response ---------------------------------------------------

    def carries(self, resp: Response) -> bool:
        return self._resp is resp

    async def send(
        self, data: bytes, head_deadline: float, deadline: float | None, bodiless: bool
    ) -> Response:
        """Write the request; wait for the response head until `head_deadline` (loop time)."""
        assert self._transport is not None
        self._deadline = deadline
        self._bodiless = bodiless
        self._resp = Response(self)
        self._head = self.loop.create_future()
        self.received = False
        self._arm(head_deadline if deadline is None else min(head_deadline, deadline))
        self._transport.write(data)
        try:
            return await self._head
        except BaseException:
            self.abort()  # cancelled (client gone) or failed: the upstream must see us leave
            raise

    def finish(self, resp: Response) -> None:
        if self._resp is not resp:
            return
        self._resp = None
        self._cancel_timer()
        if resp._done and self._keep_alive and not self.closed and not resp._chunks:
            self._parser = httptools.HttpResponseParser(self)
            self.resume()
            self._pool.put_back(self)
        else:
            self.abort()

    def pause(self) -> None:
        if not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self._pool.forget(self)
            if self._transport is not None:
                self._transport.abort()
        self._cancel_timer()

    def _until_eof(self) -> bool:
        """The body has neither a length nor chunked framing: it ends when the connection does."""
        resp = self._resp
        if resp is None or resp.content_length is not None:
            return False
        return not any(
            n.lower() == b"transfer-encoding" and b"chunked" in v.lower()
            for n, v in resp.raw_headers
        )

    def _error(self, exc: UpstreamError) -> None:
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.set_exception(exc)
        if self._resp is not None:
            self._resp._fail(exc)
        self.abort()

    def _arm(self, deadline: float | None) -> None:
        self._cancel_timer()
        if deadline is not None:
            self._timer = self.loop.call_at(deadline, self._expired)

    def _expired(self) -> None:
        self._timer = None
        if self._head is None and self._deadline is not None and self.loop.time() < self._deadline:
            self._arm(self._deadline)  # the head came in time: now the total limit
            return
        if self._head is None and self._deadline is None:
            return  # the head came in time and there is no total limit
        self._error(UpstreamTimeout("first byte" if self._head is not None else "total"))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Pool:
    """Keep-alive connections per endpoint, unbounded like the aiohttp connector it replaces;
    idle ones are closed after `keepalive_timeout` seconds."""

    def __init__(self, *, keepalive_timeout: float = 60.0) -> None:
        self._keepalive = keepalive_timeout
        self._sweep_every = min(_IDLE_SWEEP_SECONDS, keepalive_timeout / 2)
        self._idle: dict[Endpoint, list[_Connection]] = {}
        self._all: set[_Connection] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    async def request(
        self, endpoint: Endpoint, limits: Limits, data: bytes, method: str
    ) -> Response:
        """Send `data` (head + body, see `request_head`) and wait for the response head."""
        if self._closed:
            raise RuntimeError("pool is closed")
        loop = asyncio.get_running_loop()
        now = loop.time()
        head_deadline = now + limits.first_byte
        deadline = None if limits.total is None else now + limits.total
        bodiless = method == "HEAD"
        conn = self._take(endpoint)
        if conn is not None:
            try:
                return await conn.send(data, head_deadline, deadline, bodiless)
            except Reset:
                # The upstream closed an idle connection as we reused it; like aiohttp, retry
                # idempotent requests once on a fresh connection.
                if conn.received or method not in _IDEMPOTENT:
                    raise
        try:
            async with asyncio.timeout(min(limits.connect, head_deadline - loop.time())):
                conn = await self._open(endpoint, loop)
        except TimeoutError:
            raise UpstreamTimeout("connect") from None
        return await conn.send(data, head_deadline, deadline, bodiless)

    async def fetch(
        self,
        endpoint: Endpoint,
        limits: Limits,
        method: str,
        target: str,
        headers: Iterable[tuple[bytes, bytes]] = (),
        body: bytes = b"",
    ) -> Reply:
        """One whole exchange: send the request, read the whole response body within `limits`.
        The buffered form of `request`, for every caller that needs the body whole."""
        head = request_head(method, target, endpoint, headers, body)
        resp = await self.request(endpoint, limits, head + body if body else head, method)
        try:
            data = await resp.read()
        except BaseException:
            resp.close()  # cut short (failed, cancelled): the upstream must see us leave
            raise
        resp.release()
        return Reply(resp.status, tuple(resp.raw_headers), data)

    def put_back(self, conn: _Connection) -> None:
        if self._closed:
            conn.abort()
            return
        conn.idle_since = conn.loop.time()
        self._idle.setdefault(conn._endpoint, []).append(conn)
        if self._sweeper is None:
            self._sweeper = conn.loop.call_later(self._sweep_every, self._sweep)

    def adopt(self, conn: _Connection) -> None:
        if self._closed:
            conn.abort()
        else:
            self._all.add(conn)

    def forget(self, conn: _Connection) -> None:
        self._all.discard(conn)
        idle = self._idle.get(conn._endpoint)
        if idle and conn in idle:
            idle.remove(conn)

    def discard(self, endpoint: Endpoint) -> None:
        """Close the idle connections to `endpoint` (an address that left its upstream's set);
        one still carrying an exchange goes back idle after it and the idle sweep closes it,
        since nothing chooses the address any more."""
        for conn in self._idle.pop(endpoint, []):
            conn.abort()

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self._all):
            conn.abort()
        self._idle.clear()

    def _take(self, endpoint: Endpoint) -> _Connection | None:
        idle = self._idle.get(endpoint)
        while idle:
            conn = idle.pop()  # most recently used first: its peer is least likely to close it
            if not conn.closed:
                return conn
        return None

    async def _open(self, endpoint: Endpoint, loop: asyncio.AbstractEventLoop) -> _Connection:
        try:
            _, conn = await loop.create_connection(
                lambda: _Connection(self, endpoint, loop),
                endpoint.host,
                endpoint.port,
                ssl=endpoint.ssl,
                server_hostname=endpoint.server_hostname,
            )
        except ssl.SSLError as exc:
            raise ConnectFailed(f"TLS: {exc.reason or type(exc).__name__}") from exc
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
            raise ConnectFailed(reason) from exc
        return conn

    def _sweep(self) -> None:
        self._sweeper = None
        loop = asyncio.get_running_loop()
        cutoff = loop.time() - self._keepalive
        for idle in list(self._idle.values()):
            for conn in [c for c in idle if c.idle_since < cutoff]:
                conn.abort()
        if any(self._idle.values()):
            self._sweeper = loop.call_later(self._sweep_every, self._sweep)
