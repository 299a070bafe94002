"""Client connections: the runner `make_runner` builds, with a connection cap, OpenAI-style bodies
for requests aiohttp's HTTP parser rejects, and a shutdown bounded by `drain_seconds`.

aiohttp's own shutdown waits `shutdown_timeout` for handlers, then cancels them and waits as long
again, so a grace period sized by `drain_seconds` alone ended in SIGKILL. Here the drain is ours:
wait up to `drain_seconds` for the requests in progress (tracked by `count_active`), cancel those
left and wait up to SHUTDOWN_MARGIN_S for them to end; aiohttp then finds nothing in progress (its
two waits are SHUTDOWN_MARGIN_S each, for a response still being written). Total: `drain_seconds`
+ a few milliseconds when handlers end on cancel, 3 x SHUTDOWN_MARGIN_S at worst, plus the app's
own cleanup.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from proxy.errors import Handler, ProxyError, error_body, error_response
from proxy.keys import LIFECYCLE

log = logging.getLogger("tbg.proxy")

SHUTDOWN_MARGIN_S = 0.5
_REFUSE_AFTER_S = 1.0  # a refused connection that sends nothing is closed after this long


@web.middleware
async def count_active(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Track requests in progress (their handlers' tasks), for the drain."""
    state = request.app[LIFECYCLE]
    task = asyncio.current_task()
    if task is None:  # not in a task: nothing to drain or cancel
        return await handler(request)
    state.active.add(task)
    try:
        return await handler(request)
    finally:
        state.active.discard(task)
        if not state.active and state.drained is not None:
            state.drained.set()


class _Handler(RequestHandler):
    """aiohttp's connection protocol, answering what its parser rejects with an OpenAI-style JSON
    body that never echoes the request's bytes (aiohttp's own text/plain body quotes them)."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, None)  # logs; raises if a response began
        if status >= 500:
            error = ProxyError(status, "The proxy hit an internal error.", "server_error",
                               "internal_error")  # fmt: skip
        else:
            try:
                phrase = HTTPStatus(status).phrase
            except ValueError:
                phrase = ""
            error = ProxyError(
                status,
                f"The request is not valid HTTP/1.1{f' ({phrase})' if phrase else ''}.",
                "invalid_request_error",
                "invalid_http_request",
            )
        response = error_response(error)
        response.force_close()
        return response


class _Refuse(asyncio.Protocol):
    """A connection over `max_connections`: answered 503 once its request starts, then closed."""

    _BODY = error_body(
        "The proxy is at its connection limit; retry shortly.",
        "server_error",
        "too_many_connections",
    )
    _RESPONSE = (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\nRetry-After: 1\r\n\r\n%s" % (len(_BODY), _BODY)
    )

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        self._timer = asyncio.get_running_loop().call_later(_REFUSE_AFTER_S, self._answer)

    def data_received(self, data: bytes) -> None:
        self._answer()

    def _answer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        transport, self._transport = self._transport, None
        if transport is not None and not transport.is_closing():
            transport.write(self._RESPONSE)
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport = None


class _Server(web.Server):
    """aiohttp's Server with the proxy's protocol and a cap on open connections."""

    max_connections = 0  # set per instance by ProxyRunner; 0: no cap

    def __call__(self) -> Any:
        if self.max_connections and len(self._connections) >= self.max_connections:
            log.warning("connection refused: at the limit", extra={"limit": self.max_connections})
            return _Refuse()
        return _Handler(self, loop=self._loop, **self._kwargs)


class ProxyRunner(web.AppRunner):
    """web.AppRunner with the proxy's connection handling and bounded drain (module docstring)."""

    def __init__(
        self, app: web.Application, *, drain_seconds: float, max_connections: int, **kwargs: Any
    ) -> None:
        super().__init__(app, shutdown_timeout=SHUTDOWN_MARGIN_S, **kwargs)
        self._drain_seconds = drain_seconds
        self._max_connections = max_connections

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server  # same state, the proxy's protocol factory
        server.max_connections = self._max_connections  # type: ignore[attr-defined]
        return server

    async def shutdown(self) -> None:
        """Called by cleanup() once the sites stopped accepting and idle connections closed:
        wait up to drain_seconds for requests in progress, then run the app's on_shutdown."""
        state = self.app[LIFECYCLE]
        state.draining = True
        state.drained = asyncio.Event()
        if state.active and not await _wait(state.drained, self._drain_seconds):
            # aiohttp would wait its timeout, cancel, and wait again: cancel them here instead.
            log.warning("drain deadline reached", extra={"in_progress": len(state.active)})
            for task in list(state.active):
                task.cancel()
            await _wait(state.drained, SHUTDOWN_MARGIN_S)
        await super().shutdown()


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True
