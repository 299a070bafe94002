"""The one upstream client for every caller: HEAD, whole answers (`Pool.fetch`), its error kinds and
time limits, and the callers beside forwarding (merged /v1/models, probes, replays, /metrics) on
real loopback sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from aiohttp import web

from proxy.config import Config, build_config
from proxy.h1 import (
    ConnectFailed,
    Endpoint,
    Limits,
    Pool,
    ProtocolError,
    Reset,
    UpstreamError,
    UpstreamTimeout,
    request_head,
)
from proxy.probe import PROBE_USER_AGENT, UpstreamProbe
from proxy.shadow.transport import MetricsUnavailable, UpstreamTransport
from proxy.upstreams import RESPONSE_DROP, Upstreams, end_to_end, end_to_end_raw, new_session

from .fakes import FakeUpstream, proxy_stack
from .test_forwarding import sample
from .test_h1 import LIMITS, SIZED, Script, _request, _serve, upstream

HEAD_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n"


def _head(endpoint: Endpoint) -> bytes:
    return request_head("HEAD", "/v1/models", endpoint, [], b"")


async def test_a_head_response_ends_with_its_head_and_the_connection_is_reused() -> None:
    seen: list[bytes] = []
    async with upstream(_serve(HEAD_ANSWER, SIZED, seen=seen)) as (endpoint, _, conns):
        pool = Pool()
        resp = await pool.request(endpoint, LIMITS, _head(endpoint), "HEAD")
        assert (resp.status, resp.content_length, resp.complete) == (200, 7, True)
        assert await resp.read() == b""
        resp.release()
        reply = await pool.fetch(endpoint, LIMITS, "GET", "/v1/models")
        assert reply.body == b'{"x":1}'  # the next response is parsed afresh, not as HEAD's body
        assert conns == [1] and seen[0].startswith(b"HEAD /v1/models HTTP/1.1\r\n")
        await pool.close()


async def test_bytes_after_a_head_response_keep_its_connection_out_of_the_pool() -> None:
    async with upstream(_serve(HEAD_ANSWER + b'{"x":1}', SIZED)) as (endpoint, _, conns):
        pool = Pool()
        resp = await pool.request(endpoint, LIMITS, _head(endpoint), "HEAD")
        await asyncio.sleep(0.05)  # the stray body arrives
        assert await resp.read() == b""
        resp.release()
        assert not pool._all  # not trusted again
        reply = await pool.fetch(endpoint, LIMITS, "GET", "/v1/models")
        assert reply.status == 200 and conns == [2]
        await pool.close()


async def test_fetch_returns_the_whole_answer_and_pools_the_connection() -> None:
    chunked = (
        b"HTTP/1.1 201 Created\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    seen: list[bytes] = []
    async with upstream(_serve(chunked, SIZED, seen=seen)) as (endpoint, _, conns):
        pool = Pool()
        reply = await pool.fetch(
            endpoint, LIMITS, "POST", "/v1/x", [(b"Content-Type", b"text/plain")], b"hi"
        )
        assert (reply.status, reply.body, reply.header(b"x-a")) == (201, b"abcde", b"1")
        assert reply.header(b"x-missing") is None
        assert seen[0].endswith(b"Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi")
        assert (await pool.fetch(endpoint, LIMITS, "GET", "/v1/y")).body == b'{"x":1}'
        assert conns == [1]
        await pool.close()


def test_one_header_filter_for_requests_and_responses() -> None:
    """Hop-by-hop headers and those a `Connection` header names go, in either direction; the
    response form is the same filter, decoded as aiohttp's server decodes."""
    raw = [
        (b"Content-Type", b"application/json"),
        (b"Connection", b"keep-alive, X-Hop"),
        (b"x-hop", b"1"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Content-Length", b"2"),
        (b"X-Name", "café".encode()),
    ]
    kept = end_to_end(raw, RESPONSE_DROP)
    assert kept == [(b"Content-Type", b"application/json"), (b"X-Name", "café".encode())]
    assert end_to_end_raw(raw) == [("Content-Type", "application/json"), ("X-Name", "café")]
    config = build_config({"upstreams": [{"name": "up", "base_url": "http://h/v1"}]}, {})
    request = [(b"Host", b"proxy"), (b"Expect", b"100-continue"), (b"X-Tbg-Replay", b"off"), *raw]
    sent = Upstreams(config, Pool()).raw_request_headers(config.upstreams[0], request, True)
    assert sent == [
        (b"Content-Type", b"application/json"),
        (b"X-Name", "café".encode()),
        (b"Accept-Encoding", b"identity"),
    ]


def test_limits_capped_cut_every_limit_to_the_bound() -> None:
    assert Limits(10.0, 300.0, 900.0).capped(2.0) == Limits(2.0, 2.0, 2.0)
    assert Limits(1.0, 300.0, None).capped(5.0) == Limits(1.0, 5.0, 5.0)
    assert Limits(1.0, 0.5, 0.8).capped(5.0) == Limits(1.0, 0.5, 0.8)


async def test_every_failure_is_an_upstream_error_with_its_kind() -> None:
    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _request(r)
        await asyncio.sleep(10)

    async def cut(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart")
        await w.drain()
        w.transport.abort()

    pool = Pool()
    failures: list[UpstreamError] = []
    scripts: list[Script] = [silent, cut, _serve(b"SMTP ready\r\n\r\n")]
    for script in scripts:
        async with upstream(script) as (endpoint, _, _):
            with pytest.raises(UpstreamError) as info:
                await pool.fetch(endpoint, Limits(1.0, 0.3, 1.0), "GET", "/")
            failures.append(info.value)
    closed = Endpoint("127.0.0.1", endpoint.port, endpoint.host_header)  # nothing listens now
    with pytest.raises(UpstreamError) as info:
        await pool.fetch(closed, LIMITS, "GET", "/")
    failures.append(info.value)
    kinds = [(type(f), f.kind) for f in failures]
    assert kinds == [
        (UpstreamTimeout, "timeout"),
        (Reset, "reset"),
        (ProtocolError, "protocol"),
        (ConnectFailed, "connect"),
    ]
    assert isinstance(failures[0], TimeoutError)  # a timeout is also what asyncio code expects
    assert str(failures[3]) == "Connection refused"  # the reason, for the probe's detail
    assert not pool._all
    await pool.close()


# -- the callers beside forwarding -----------------------------------------------------------


class Recorder:
    """An aiohttp upstream: /v1/chat/completions stalls before its head when asked to, /metrics
    answers Prometheus text, everything records its headers."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self.stall = 0.0
        self.metrics_status = 200

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append((request.method, request.raw_path, dict(request.headers)))
        if request.path.endswith("/metrics"):
            text = "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 3\n"
            return web.Response(status=self.metrics_status, text=text)
        if self.stall:
            await asyncio.sleep(self.stall)
        return web.Response(body=b'{"echo": %d}' % len(body), content_type="application/json")


async def _recorder() -> tuple[web.AppRunner, Recorder, str]:
    recorder = Recorder()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recorder.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, recorder, f"http://127.0.0.1:{runner.addresses[0][1]}/tenant/v1"


def _config(base: str, **upstream: Any) -> Config:
    entry = {"name": "up", "base_url": base, **upstream}
    return build_config({"upstreams": [entry]}, {"UP_KEY": "sk-up"})


async def test_replays_go_through_the_pool_with_auth_and_a_first_byte_limit() -> None:
    runner, recorder, base = await _recorder()
    pool = new_session()
    try:
        plain = Upstreams(_config(base, timeouts={"first_byte": 0.3}), pool)
        transport = UpstreamTransport(lambda: plain, {})
        client = {"Authorization": "Bearer sk-client", "X-Other": "not replayed"}
        status, body = await transport.post_json("up", "/chat/completions", b"{}", client, 5.0)
        assert (status, body) == (200, b'{"echo": 2}')
        method, path, headers = recorder.seen[-1]
        assert (method, path) == ("POST", "/tenant/v1/chat/completions")
        assert headers["Authorization"] == "Bearer sk-client"  # passthrough
        assert headers["Content-Type"] == "application/json" and "X-Other" not in headers
        keyed = UpstreamTransport(lambda: plain, {"up": "sk-replays"})
        await keyed.post_json("up", "/chat/completions", b"{}", client, 5.0)
        assert recorder.seen[-1][2]["Authorization"] == "Bearer sk-replays"
        injected = Upstreams(_config(base, api_key_env="UP_KEY"), pool)
        await UpstreamTransport(lambda: injected, {}).post_json(
            "up", "/chat/completions", b"{}", client, 5.0
        )
        assert recorder.seen[-1][2]["Authorization"] == "Bearer sk-up"
        recorder.stall = 2.0  # no head within the upstream's first_byte (0.3 s)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(UpstreamTimeout):
            await transport.post_json("up", "/chat/completions", b"{}", client, 5.0)
        assert loop.time() - started < 1.5  # the first-byte limit, not the replay's 5 s
        started = loop.time()
        relaxed = Upstreams(_config(base), pool)
        with pytest.raises(UpstreamTimeout):  # and the replay timeout cuts the first byte too
            await UpstreamTransport(lambda: relaxed, {}).post_json(
                "up", "/chat/completions", b"{}", client, 0.3
            )
        assert loop.time() - started < 1.5
    finally:
        await pool.close()
        await runner.cleanup()


async def test_the_metrics_poll_reads_beside_v1_through_the_pool() -> None:
    runner, recorder, base = await _recorder()
    pool = new_session()
    try:
        transport = UpstreamTransport(lambda: Upstreams(_config(base), pool), {})
        assert "vllm:num_requests_running 3" in await transport.fetch_metrics("up")
        assert recorder.seen[-1][:2] == ("GET", "/tenant/metrics")
        recorder.metrics_status = 500
        with pytest.raises(MetricsUnavailable, match="answered 500"):
            await transport.fetch_metrics("up")
    finally:
        await pool.close()
        await runner.cleanup()


async def test_the_probe_goes_through_the_pool_with_the_injected_key() -> None:
    runner, recorder, base = await _recorder()
    pool = new_session()
    try:
        probe = UpstreamProbe(Upstreams(_config(base, api_key_env="UP_KEY"), pool))
        probe.start()
        await probe.wait()
        ready, results = probe.ready()
        assert ready is True and results["up"].status == 200
        method, path, headers = recorder.seen[-1]
        assert (method, path) == ("GET", "/tenant/v1/models")
        assert headers["User-Agent"] == PROBE_USER_AGENT
        assert headers["Authorization"] == "Bearer sk-up"
        await probe.close()
    finally:
        await pool.close()
        await runner.cleanup()


@dataclass
class SlowModels(FakeUpstream):
    delay: float = 0.0

    async def _respond(self, request: web.Request, body: bytes) -> web.StreamResponse:
        if self.delay:
            await asyncio.sleep(self.delay)
        return await super()._respond(request, body)


def _two(urls: list[str]) -> Config:
    upstreams = [
        {"name": "left", "base_url": urls[0], "models": ["a"]},
        {"name": "right", "base_url": urls[1], "models": ["b"], "timeouts": {"first_byte": 0.3}},
    ]
    return build_config({"upstreams": upstreams}, {})


async def test_merged_models_go_through_the_pool_and_a_slow_one_is_a_timeout() -> None:
    slow = SlowModels(name="right", models=("b",))
    make: Callable[[list[str]], Config] = _two
    async with (
        proxy_stack(make, [FakeUpstream(name="left", models=("a",)), slow]) as stack,
        httpx.AsyncClient() as http,
    ):
        r = await http.get(stack.proxy_url + "/v1/models", headers={"Accept-Encoding": "gzip"})
        assert r.status_code == 200 and [m["id"] for m in r.json()["data"]] == ["a", "b"]
        listing = stack.fakes[0].requests[-1]
        assert listing.path == "/v1/models"
        assert listing.headers["Accept-Encoding"] == "identity"  # this side parses the body
        slow.delay = 2.0
        r = await http.get(stack.proxy_url + "/v1/models")
        assert r.status_code == 200 and [m["id"] for m in r.json()["data"]] == ["a"]
        assert sample(stack.app, "tbg_upstream_errors_total", upstream="right", kind="timeout") == 1
