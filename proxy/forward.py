"""The forwarding handler: every /v1/* request, relayed byte for byte to the routed upstream.

Hot path: read the body (bounded), parse it only on the routes whose `model` decides the upstream,
send it on, relay status, end-to-end headers and body chunks as they arrive. With a tap plan
(chat/completions only) the upstream bytes are also teed into the Exchange for the shadow path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import orjson
from aiohttp import web

from proxy import errors
from proxy.config import Config, UpstreamConfig
from proxy.endpoints import Member
from proxy.errors import ProxyError
from proxy.h1 import ConnectFailed, Response, UpstreamError, request_head
from proxy.inflight import InFlight
from proxy.keys import UPSTREAMS
from proxy.metrics import MERGED_UPSTREAM, NO_UPSTREAM, OTHER_MODEL, ProxyMetrics
from proxy.probe import public_url
from proxy.sse import SSESplitter, event_json
from proxy.tap import Exchange, RequestInfo, Tap, TapPlan
from proxy.upstreams import (
    HEAD_RESPONSE_DROP,
    PathEscape,
    Upstreams,
    end_to_end_raw,
    normalised_tail,
)

log = logging.getLogger("tbg.proxy")
access_log = logging.getLogger("tbg.access")

_ROUTES = {
    "/chat/completions": "chat",
    "/completions": "completions",
    "/embeddings": "embeddings",
    "/models": "models",
    "/responses": "responses",
}
_JSON_ROUTES = frozenset({"chat", "completions", "embeddings", "responses"})
_TAP_ROUTES = frozenset({"chat", "completions", "responses"})
CLIENT_CLOSED = 499  # nginx's "client closed request", for metrics and logs only
# How an event stream's last event ends (SSE allows \n, \r\n and \r line ends).
_DONE_ENDINGS = (b"data: [DONE]\n\n", b"data: [DONE]\r\n\r\n", b"data: [DONE]\r\r")
# The Responses API sends no `[DONE]`: its stream ends with one of these typed events.
_FINAL_EVENTS = (b"event: response.completed", b"event: response.incomplete",
                 b"event: response.failed")  # fmt: skip


def _is_final(raw: bytes) -> bool:
    """Whether one SSE event (its raw bytes) ends the stream: `[DONE]` or a final Responses event."""
    return raw.endswith(_DONE_ENDINGS) or raw.lstrip(b"\r\n").startswith(_FINAL_EVENTS)


# Writes up to this size into an empty socket buffer never wait for the client (the transport's
# high-water mark is 64 KiB); others run under client_write_timeout_seconds.
_SMALL_WRITE = 16 * 1024
_LARGE_BODY = 64 * 1024
# The most of one sampled response the shadow path keeps (body, or SSE events): a larger one is
# relayed in full but not replayed (dropped as primary_incomplete). Comparable T=0 answers are
# far smaller; the bound keeps a huge response from being held in memory twice.
TEE_MAX_BYTES = 8 * 1024 * 1024


def route_of(path: str) -> str:
    """Bounded `route` label for a path below /v1 (e.g. "/chat/completions" -> "chat")."""
    return _ROUTES.get(path.rstrip("/") or "/", "other")


@dataclass(slots=True)
class _State:
    """Per-request bookkeeping for metrics and the access log (local to one handler call)."""

    route: str
    started: float
    model_name: str = OTHER_MODEL
    upstream: str = NO_UPSTREAM
    status: int = 0
    first_byte_at: float | None = None
    upstream_wait: float = 0.0
    # An event stream's `data: [DONE]` (or a Responses stream's final event) reached the client: a
    # disconnect after it (SDKs close once they read it, before the upstream's chunked terminator)
    # is a delivered response, not a 499.
    delivered: bool = False
    # The address it goes to when the upstream's endpoints come from DNS (proxy/endpoints.py).
    member: Member | None = None


@dataclass(slots=True)
class _Tee:
    """What the upstream sent, captured for the tap: at most TEE_MAX_BYTES of it; beyond that the
    capture stops (`truncated`) while the relay goes on."""

    plan: TapPlan
    status: int = 0
    body: bytes | None = None
    events: list[Mapping[str, Any]] = field(default_factory=list)
    completed: bool = False
    truncated: bool = False
    size: int = 0
    parts: list[bytes] = field(default_factory=list)

    def keep(self, n: int) -> bool:
        """Count `n` more captured bytes; False (and stop capturing) once over the limit."""
        if self.truncated:
            return False
        self.size += n
        if self.size > TEE_MAX_BYTES:
            self.truncated = True
            self.body, self.events, self.parts = None, [], []
            return False
        return True


class _Retry(Exception):
    """The augmented response cannot be rewritten within TEE_MAX_BYTES: resend plain."""


class Forwarder:
    """The /v1/{tail} handler. Stateless per request; holds only per-app collaborators. Sends
    through the app's one upstream client (proxy/h1.py, via `app[UPSTREAMS]`)."""

    def __init__(
        self, config: Config, metrics: ProxyMetrics, in_flight: InFlight, tap: Tap | None
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._in_flight = in_flight
        self._tap = tap
        self._keys = tuple(k.encode() for k in config.api_keys)
        self._children: dict[tuple[str, str, str, int], tuple[Any, Any, Any, Any]] = {}
        self._public_urls = {u.name: public_url(u.base_url) for u in config.upstreams}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        tail = "/" + request.match_info.get("tail", "")
        st = _State(route=route_of(tail), started=time.monotonic())
        try:
            self._check_auth(request, st.route)
            # Maybe a dot segment, however the client encoded it (see normalised_tail).
            if "/." in tail or "\\" in tail:
                _check_tail(tail)
            body = await self._read_body(request, st.route)
            upstreams = request.app[UPSTREAMS]
            if st.route == "models" and request.method == "GET" and len(upstreams.names) > 1:
                return await self._models(request, st, upstreams)
            parsed: dict[str, Any] | None = None
            if st.route in _JSON_ROUTES and request.method == "POST":
                parsed = _parse_json(body)
            target = upstreams.route(parsed.get("model") if parsed is not None else None)
            st.upstream, st.model_name = target.upstream.name, target.model_name
            return await self._forward(request, st, upstreams, target.upstream, body, parsed)
        except ProxyError as exc:
            st.status = exc.status
            if exc.status == 408:
                return await _answer_and_close(request, errors.error_response(exc))
            return errors.error_response(exc)
        except (asyncio.CancelledError, ConnectionResetError):
            if not st.delivered:
                st.status = CLIENT_CLOSED
            raise
        finally:
            # After the response is written (aiohttp writes a returned Response once this handler
            # returns, in the same step): metrics and the access log stay off the critical path.
            asyncio.get_running_loop().call_soon(self._observe_safely, request, st)

    # -- request side --------------------------------------------------------------------------

    def _check_auth(self, request: web.Request, route: str) -> None:
        if not self._keys:
            return
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        given = token.strip().encode() if scheme.lower() == "bearer" else b""
        ok = False
        for key in self._keys:  # no early exit: the time does not depend on which key matched
            ok |= hmac.compare_digest(given, key)
        if not ok:
            self._metrics.auth_failures.labels(route).inc()
            raise errors.unauthorized()

    async def _read_body(self, request: web.Request, route: str) -> bytes:
        limit = self._config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            self._metrics.body_too_large.labels(route).inc()
            raise errors.too_large(limit)
        if not request.body_exists:
            return b""
        if request.content_length is not None:
            # Usually the whole body came with the head: take it without a round trip through
            # the event loop.
            head = request.content.read_nowait()
            if len(head) == request.content_length:
                return head
            buf = bytearray(head)
        else:
            buf = bytearray()
        try:
            async with asyncio.timeout(self._config.client_body_timeout_seconds):
                while chunk := await request.content.readany():
                    buf += chunk
                    if len(buf) > limit:
                        self._metrics.body_too_large.labels(route).inc()
                        raise errors.too_large(limit)
        except TimeoutError:
            log.info("request body too slow", extra={"route": route, "received": len(buf)})
            raise errors.body_timeout(self._config.client_body_timeout_seconds) from None
        return bytes(buf)

    # -- forwarding ----------------------------------------------------------------------------

    async def _forward(
        self,
        request: web.Request,
        st: _State,
        upstreams: Upstreams,
        upstream: UpstreamConfig,
        body: bytes,
        parsed: dict[str, Any] | None,
    ) -> web.StreamResponse:
        info: RequestInfo | None = None
        plan: TapPlan | None = None
        st.member = upstreams.choose(upstream)  # None: base_url as configured
        if self._tap is not None and parsed is not None and st.route in _TAP_ROUTES:
            info = RequestInfo(
                route=st.route,
                upstream=upstream.name,
                model_name=st.model_name,
                body=MappingProxyType(parsed),
                raw_body=body,
                headers=request.headers,
                stream=parsed.get("stream") is True,
                pod=st.member.pod if st.member is not None else None,
            )
            plan = self._plan(info)
        tee = _Tee(plan) if plan is not None else None
        in_flight = self._in_flight
        in_flight.enter(upstream.name)
        if st.member is not None:
            in_flight.enter_pod(upstream.name, st.member.pod)
        try:
            return await self._relay(request, st, upstreams, upstream, body, tee)
        finally:
            in_flight.leave(upstream.name)
            if st.member is not None:
                in_flight.leave_pod(upstream.name, st.member.pod)
                if info is not None and info.pod != st.member.pod:  # it went to another
                    info = replace(info, pod=st.member.pod)
            if info is not None and tee is not None:
                if st.delivered and not tee.completed:
                    tee.completed, tee.parts = True, []  # the events are all in the tee
                self._complete(info, tee, st.started)

    async def _send(
        self,
        request: web.Request,
        upstreams: Upstreams,
        upstream: UpstreamConfig,
        body: bytes,
        identity: bool,
        member: Member | None = None,
    ) -> Response:
        """Send the request upstream; return once the response head is in."""
        tail = "/" + request.match_info.get("tail", "")
        method = request.method
        endpoint = upstreams.endpoint(upstream) if member is None else member.endpoint
        target = upstreams.target(upstream, tail, _raw_query(request))
        raw = upstreams.raw_request_headers(upstream, request.raw_headers, identity)
        head = request_head(method, target, endpoint, raw, body)
        return await upstreams.pool.request(
            endpoint, upstreams.limits(upstream), head + body if body else head, method
        )

    async def _relay(
        self,
        request: web.Request,
        st: _State,
        upstreams: Upstreams,
        upstream: UpstreamConfig,
        client_body: bytes,
        tee: _Tee | None,
    ) -> web.StreamResponse:
        while True:
            plan = tee.plan if tee is not None else None
            body = client_body
            if plan is not None and plan.upstream_body is not None:
                body = plan.upstream_body
            sent = time.monotonic()
            try:
                resp = await self._send(
                    request, upstreams, upstream, body, tee is not None, st.member
                )
            except UpstreamError as exc:
                if self._failed_over(st, upstreams, upstream, exc):
                    continue  # nothing reached that address: the next one
                raise self._upstream_failure(upstream.name, exc) from None
            finally:
                st.upstream_wait += time.monotonic() - sent
            if st.member is not None:
                upstreams.sent_to(upstream, st.member)
            st.status = resp.status
            if tee is not None and plan is not None and plan.plain is not None and _refused(resp):
                # The upstream refused the changed body: nothing reached the client yet, so the
                # client's own body goes instead and the client sees what it would have.
                self._fall_back(tee, plan.plain, resp, "refused")
                continue
            try:
                return await self._relay_response(request, st, resp, tee, upstream)
            except _Retry:
                assert tee is not None and plan is not None and plan.plain is not None
                self._fall_back(tee, plan.plain, resp, "too_large")

    def _failed_over(
        self, st: _State, upstreams: Upstreams, upstream: UpstreamConfig, exc: UpstreamError
    ) -> bool:
        """The chosen address refused the connection (nothing was sent): count it, mark it
        down and move the request, its in-flight count with it, to another address (True);
        False when there is none up."""
        member = st.member
        if member is None or not isinstance(exc, ConnectFailed):
            return False
        self._metrics.upstream_errors.labels(upstream.name, exc.kind).inc()
        endpoints = upstreams.endpoint_set(upstream.name)
        assert endpoints is not None
        endpoints.refused(member)
        nxt = endpoints.pick(avoid=member.pod)
        if nxt is None or nxt is member or endpoints.is_down(nxt):
            return False
        self._in_flight.leave_pod(upstream.name, member.pod)
        self._in_flight.enter_pod(upstream.name, nxt.pod)
        st.member = nxt
        return True

    def _fall_back(self, tee: _Tee, plain: TapPlan, resp: Response, why: str) -> None:
        log.info("augmented request resent plain", extra={"why": why, "status": resp.status})
        resp.close()
        resp.release()
        tee.plan, tee.status, tee.body, tee.events = plain, 0, None, []
        tee.completed = tee.truncated = False
        tee.size, tee.parts = 0, []

    async def _relay_response(
        self,
        request: web.Request,
        st: _State,
        resp: Response,
        tee: _Tee | None,
        upstream: UpstreamConfig,
    ) -> web.StreamResponse:
        plan = tee.plan if tee is not None else None
        if tee is not None:
            tee.status = resp.status
        try:
            headers = end_to_end_raw(resp.raw_headers)
            is_sse = resp.content_type == "text/event-stream"
            ok = 200 <= resp.status < 300
            if plan is not None and tee is not None and not is_sse and ok and plan.rewrite_body:
                return await self._relay_rewritten(request, st, resp, headers, plan, tee, upstream)
            if not is_sse and resp.complete and resp.content_length is not None:
                # The whole sized body came with the head (the usual case for a JSON answer):
                # send head and body to the client in one write.
                st.first_byte_at = time.monotonic()
                data = resp.read_buffered()
                if not data and request.method == "HEAD":  # the GET's length, and no body
                    headers = end_to_end_raw(resp.raw_headers, HEAD_RESPONSE_DROP)
                if tee is not None:
                    if tee.keep(len(data)):
                        tee.body = data
                    tee.completed = True
                whole = web.Response(
                    status=resp.status, reason=resp.reason, headers=headers, body=data
                )
                return await self._whole(request, st, whole)
            out = web.StreamResponse(status=resp.status, reason=resp.reason, headers=headers)
            rewrite = plan.rewrite_event if plan is not None and is_sse and ok else None
            if resp.content_length is not None and rewrite is None:
                out.content_length = resp.content_length
            try:
                await out.prepare(request)
                await self._pump(request, st, resp, out, tee, is_sse, rewrite, upstream)
            except ConnectionResetError:  # the client went away mid-response (or after [DONE])
                if not st.delivered:
                    st.status = CLIENT_CLOSED
                resp.close()
            return out
        except _Retry:
            resp.close()
            raise  # the caller resends plain
        except BaseException:
            resp.close()  # incomplete: drop the connection so the upstream stops generating
            raise
        finally:
            resp.release()

    async def _pump(
        self,
        request: web.Request,
        st: _State,
        resp: Response,
        out: web.StreamResponse,
        tee: _Tee | None,
        is_sse: bool,
        rewrite: Any,
        upstream: UpstreamConfig,
    ) -> None:
        """Relay body chunks as they arrive; with a tee, also split SSE events and capture them."""
        splitter = SSESplitter() if tee is not None and is_sse else None
        while True:
            t = time.monotonic()
            try:
                chunk = await resp.readany()
            except UpstreamError as exc:
                # Headers are already out: the only honest signal left is a truncated response.
                self._upstream_failure(upstream.name, exc)
                resp.close()
                if request.transport is not None:
                    request.transport.abort()
                return
            finally:
                st.upstream_wait += time.monotonic() - t
            if not chunk:
                break
            if splitter is None:
                if tee is not None and tee.keep(len(chunk)):
                    tee.parts.append(chunk)
                await self._write(request, out, st, chunk)
                if is_sse and (
                    chunk.endswith(_DONE_ENDINGS)
                    or (st.route == "responses" and _FINAL_EVENTS[0] in chunk)
                ):
                    st.delivered = True
                continue
            raws = splitter.feed(chunk)
            if rewrite is None:
                await self._write(request, out, st, chunk)
            for raw in raws:
                self._tee_event(tee, raw)
                if rewrite is not None:
                    await self._write(
                        request, out, st, self._rewrite(rewrite, raw, "rewrite_event")
                    )
                if _is_final(raw):
                    st.delivered = True
        if splitter is not None and (rest := splitter.flush()):
            self._tee_event(tee, rest)
            if rewrite is not None:
                await self._write(request, out, st, self._rewrite(rewrite, rest, "rewrite_event"))
        if tee is not None:
            tee.completed = True
            if splitter is None and not tee.truncated:
                tee.body = b"".join(tee.parts)
            tee.parts = []
        await out.write_eof()

    async def _relay_rewritten(
        self,
        request: web.Request,
        st: _State,
        resp: Response,
        headers: list[tuple[str, str]],
        plan: TapPlan,
        tee: _Tee,
        upstream: UpstreamConfig,
    ) -> web.StreamResponse:
        """Non-streaming with a rewrite: the body is needed whole (at most TEE_MAX_BYTES; more is
        resent plain), rewritten, then sent (head and body in one write)."""
        t = time.monotonic()
        try:
            parts = []
            while chunk := await resp.readany():
                if not tee.keep(len(chunk)):
                    raise _Retry
                parts.append(chunk)
            data = b"".join(parts)
        except UpstreamError as exc:
            raise self._upstream_failure(upstream.name, exc) from None
        finally:
            st.upstream_wait += time.monotonic() - t
        tee.body, tee.completed = data, True
        assert plan.rewrite_body is not None
        data = self._rewrite(plan.rewrite_body, data, "rewrite_body")
        st.first_byte_at = time.monotonic()
        whole = web.Response(status=resp.status, reason=resp.reason, headers=headers, body=data)
        return await self._whole(request, st, whole)

    async def _write(
        self, request: web.Request, out: web.StreamResponse, st: _State, data: bytes
    ) -> None:
        if st.first_byte_at is None:
            st.first_byte_at = time.monotonic()
        transport = request.transport
        if transport is None or (
            len(data) <= _SMALL_WRITE and not transport.get_write_buffer_size()
        ):
            await out.write(data)  # cannot wait for the client: the socket takes it at once
            return
        async with self._write_deadline(request):
            await out.write(data)

    @contextlib.asynccontextmanager
    async def _write_deadline(self, request: web.Request) -> AsyncIterator[None]:
        """Bound a write that may wait for the client to read: past client_write_timeout_seconds
        the connection is closed (the relay then ends as for a client that went away)."""
        try:
            async with asyncio.timeout(self._config.client_write_timeout_seconds):
                yield
        except TimeoutError:
            log.info("client stopped reading", extra={"path": "v1"})
            if request.transport is not None:
                request.transport.abort()
            raise ConnectionResetError("client stopped reading") from None

    async def _whole(
        self, request: web.Request, st: _State, response: web.Response
    ) -> web.StreamResponse:
        """A complete response: small ones aiohttp writes once the handler returns (head and body
        in one write); a large one is written here, within the write timeout."""
        body = response.body
        if not isinstance(body, bytes) or len(body) <= _LARGE_BODY:
            return response
        try:
            async with self._write_deadline(request):
                await response.prepare(request)
                await response.write_eof()
        except ConnectionResetError:
            st.status = CLIENT_CLOSED
        return response

    # -- /v1/models across upstreams -----------------------------------------------------------

    async def _models(
        self, request: web.Request, st: _State, upstreams: Upstreams
    ) -> web.StreamResponse:
        st.upstream = MERGED_UPSTREAM
        sent = time.monotonic()
        lists = await asyncio.gather(
            *(self._fetch_models(request, upstreams, name) for name in upstreams.names)
        )
        st.upstream_wait += time.monotonic() - sent
        seen: set[str] = set()
        merged: list[Any] = []
        for models in lists:
            for entry in models or ():
                key = entry.get("id") if isinstance(entry, dict) else None
                if isinstance(key, str) and key not in seen:
                    seen.add(key)
                    merged.append(entry)
        if all(models is None for models in lists):
            raise errors.bad_gateway("*", "all upstreams failed to list models")
        st.status = 200
        body = orjson.dumps({"object": "list", "data": merged})
        st.first_byte_at = time.monotonic()
        return web.Response(body=body, content_type="application/json")

    async def _fetch_models(
        self, request: web.Request, upstreams: Upstreams, name: str
    ) -> list[Any] | None:
        upstream = upstreams.upstream_for(name)
        # The client's headers, asking for a body this side can parse; the whole listing within
        # the first-byte limit (a merged answer waits for the slowest upstream).
        headers = upstreams.raw_request_headers(upstream, request.raw_headers, identity=True)
        try:
            with self._in_flight.track(name):
                reply = await upstreams.fetch(
                    upstream,
                    "GET",
                    upstreams.api_path(upstream, "/models"),
                    headers,
                    within=upstream.timeouts.first_byte,
                )
            if reply.status != 200:
                log.warning(
                    "models listing failed", extra={"upstream": name, "status": reply.status}
                )
                return None
            payload = orjson.loads(reply.body)
        except UpstreamError as exc:
            self._upstream_failure(name, exc)
            return None
        except orjson.JSONDecodeError:
            self._metrics.upstream_errors.labels(name, "protocol").inc()
            return None
        data = payload.get("data") if isinstance(payload, dict) else None
        return data if isinstance(data, list) else None

    # -- errors, tap, metrics ------------------------------------------------------------------

    def _upstream_failure(self, upstream: str, exc: UpstreamError) -> ProxyError:
        """Count the failure by its kind and translate it into the client's error."""
        kind = exc.kind
        if kind == "timeout":
            error = errors.gateway_timeout(upstream)
        else:
            error = errors.bad_gateway(upstream, kind)
        self._metrics.upstream_errors.labels(upstream, kind).inc()
        log.warning(
            "upstream failure",
            extra={
                "upstream": upstream,
                "kind": kind,
                "error": type(exc).__name__,
                "url": self._public_urls.get(upstream, ""),
            },
        )
        return error

    def _plan(self, info: RequestInfo) -> TapPlan | None:
        assert self._tap is not None
        try:
            return self._tap.plan(info)
        except Exception as exc:
            self._tap_failed("plan", exc)
            return None

    def _complete(self, info: RequestInfo, tee: _Tee, started: float) -> None:
        assert self._tap is not None
        exchange = Exchange(
            request=info,
            plan=tee.plan,
            status=tee.status,
            response_body=tee.body,
            events=tuple(tee.events),
            completed=tee.completed,
            started_at=started,
            finished_at=time.monotonic(),
            truncated=tee.truncated,
        )
        try:
            self._tap.complete(exchange)
        except Exception as exc:
            self._tap_failed("complete", exc)

    def _rewrite(self, fn: Any, data: bytes, stage: str) -> bytes:
        try:
            result = fn(data)
        except Exception as exc:
            self._tap_failed(stage, exc)
            return data
        if not isinstance(result, bytes):
            self._tap_failed(stage, TypeError("rewrite must return bytes"))
            return data
        return result

    def _tee_event(self, tee: _Tee | None, raw: bytes) -> None:
        if tee is not None and tee.keep(len(raw)) and (payload := event_json(raw)) is not None:
            tee.events.append(payload)

    def _tap_failed(self, stage: str, exc: BaseException) -> None:
        self._metrics.tap_errors.labels(stage).inc()
        self._metrics.internal_errors.labels("tap").inc()
        log.error("tap raised", extra={"stage": stage, "error": type(exc).__name__}, exc_info=exc)

    def _observe_safely(self, request: web.Request, st: _State) -> None:
        """`_observe` as a loop callback: a bug there is logged and counted like any other."""
        try:
            self._observe(request, st)
        except Exception:
            self._metrics.internal_errors.labels("v1").inc()
            log.exception("internal error", extra={"where": "v1", "stage": "observe"})

    def _observe(self, request: web.Request, st: _State) -> None:
        now = time.monotonic()
        duration = now - st.started
        key = (st.route, st.model_name, st.upstream, st.status)
        children = self._children.get(key)
        if children is None:  # label values are bounded, so this cache is too
            children = self._children[key] = self._label_children(st)
        requests, added, dur, ttfb_hist = children
        requests.inc()
        added.observe(max(0.0, duration - st.upstream_wait))
        ttfb = None if st.first_byte_at is None else st.first_byte_at - st.started
        if dur is not None:
            dur.observe(duration)
            if ttfb is not None and ttfb_hist is not None:
                ttfb_hist.observe(ttfb)
        if not access_log.isEnabledFor(logging.INFO):  # skip building the record when it is off
            return
        access_log.info(
            "request",
            extra={
                "method": request.method,
                "route": st.route,
                "status": st.status,
                "upstream": st.upstream,
                "model_name": st.model_name,
                "duration_s": round(duration, 6),
                "ttfb_s": None if ttfb is None else round(ttfb, 6),
                "added_s": round(max(0.0, duration - st.upstream_wait), 6),
            },
        )

    def _label_children(self, st: _State) -> tuple[Any, Any, Any, Any]:
        """The metric children for one label set, resolved once (`.labels()` locks and hashes)."""
        m = self._metrics
        requests = m.requests.labels(st.route, st.model_name, st.upstream, str(st.status))
        added = m.added.labels(st.route)
        if st.upstream == NO_UPSTREAM:
            return requests, added, None, None
        labels = (st.route, st.model_name, st.upstream)
        return requests, added, m.duration.labels(*labels), m.ttfb.labels(*labels)


async def _answer_and_close(request: web.Request, response: web.Response) -> web.Response:
    """Send `response`, then close the connection at once: aiohttp would otherwise keep reading
    (and discarding) the unread rest of a slow body for up to its lingering time (10 s)."""
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()
    return response


def _refused(resp: Response) -> bool:
    """An augmented request's response the client must not get: an error status, or a sized
    non-streaming body too large to rewrite."""
    if not 200 <= resp.status < 300:
        return True
    length = resp.content_length
    return (
        resp.content_type != "text/event-stream" and length is not None and length > TEE_MAX_BYTES
    )


def _check_tail(tail: str) -> None:
    try:
        normalised_tail(tail)
    except PathEscape:
        raise errors.bad_request(
            "The request path may not contain '.' or '..' segments (in any encoding).",
            "invalid_path",
        ) from None


def _raw_query(request: web.Request) -> str:
    """The query string exactly as the client sent it (aiohttp's `query_string` is decoded)."""
    _, _, query = request.raw_path.partition("?")
    return query.partition("#")[0]


def _parse_json(body: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise errors.bad_request("Request body is not valid JSON.", "invalid_json") from None
    if not isinstance(parsed, dict):
        raise errors.bad_request("Request body must be a JSON object.", "invalid_json")
    return parsed
