"""The upstream URL is always base_url + the client's path below /v1, and that path cannot climb
out of base_url in any spelling (`..`, `%2e%2e`, `..%2f`, `.`): such a request is refused with an
OpenAI-style 400 and never reaches the upstream, so the injected upstream key cannot be carried to
another path of the upstream's host. Raw sockets, so the targets are sent exactly as written."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from proxy.app import make_app, make_runner
from proxy.config import build_config
from proxy.probe import PROBE_USER_AGENT

PROXY_KEY = "sk-proxy-key"
UPSTREAM_KEY = "sk-upstream-SECRET-19"

ESCAPES = [
    "/v1/%2e%2e/%2e%2e/tenant-b/admin",
    "/v1/%2E%2E/metrics",
    "/v1/..%2f..%2fetc%2fpasswd",
    "/v1/../admin",
    "/v1/chat/../../admin",
    "/v1/.%2e/admin",
    "/v1/./chat/completions",
    "/v1/..%5c..%5cadmin",
    "/v1/models%5C..",
]


class Recorder:
    """An upstream serving every path of its host, recording raw targets and Authorization."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        if request.headers.get("User-Agent") == PROBE_USER_AGENT:  # the readiness probe
            return web.Response(body=b'{"data": []}', content_type="application/json")
        self.seen.append((request.raw_path, request.headers.get("Authorization", "")))
        return web.Response(body=b'{"ok": true}', content_type="application/json")


@contextlib.asynccontextmanager
async def _stack(*, keys: bool) -> AsyncIterator[tuple[int, Recorder]]:
    recorder = Recorder()
    up_app = web.Application()
    up_app.router.add_route("*", "/{tail:.*}", recorder.handle)
    up = web.AppRunner(up_app, access_log=None)
    await up.setup()
    await web.TCPSite(up, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{up.addresses[0][1]}/tenant-a/v1"
    env = {"UP_KEY": UPSTREAM_KEY, "PROXY_KEYS": PROXY_KEY}
    data: dict[str, Any] = {
        "upstreams": [{"name": "up", "base_url": base, "api_key_env": "UP_KEY", "models": ["m"]}],
    }
    if keys:
        data["api_keys_env"] = "PROXY_KEYS"
    app = make_app(build_config(data, env))
    runner = make_runner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield runner.addresses[0][1], recorder
    finally:
        await runner.cleanup()
        await up.cleanup()


async def _send(port: int, method: str, target: str, key: bool) -> tuple[int, bytes]:
    body = b'{"model": "m"}' if method == "POST" else b""
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    if key:
        lines.append(f"Authorization: Bearer {PROXY_KEY}")
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write("\r\n".join(lines).encode() + body)
        async with asyncio.timeout(5):
            response = await reader.read()
    finally:
        writer.close()
    head, _, payload = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), payload


@pytest.mark.parametrize("keys", [True, False], ids=["proxy-keys", "no-proxy-keys"])
async def test_dot_segments_in_any_encoding_are_refused(keys: bool) -> None:
    async with _stack(keys=keys) as (port, recorder):
        for target in ESCAPES:
            for method in ("GET", "POST"):
                status, payload = await _send(port, method, target, key=keys)
                assert status == 400, (target, method, status, payload)
                error = orjson.loads(payload)["error"]
                assert error["code"] == "invalid_path" and error["type"] == "invalid_request_error"
        assert recorder.seen == []  # nothing reached the upstream, key or not
        status, _ = await _send(port, "GET", "/v1/models", key=keys)
        assert status == 200 and recorder.seen == [
            ("/tenant-a/v1/models", f"Bearer {UPSTREAM_KEY}")
        ]


async def test_forwarded_targets_stay_below_base_url() -> None:
    """What is forwarded is base_url's path + the tail, re-encoded: an encoded `%`, `?` or `/`
    stays data of one segment (no second decoding upstream), and the query goes as sent."""
    cases = {
        "/v1/chat/completions?a=1&b=%20": "/tenant-a/v1/chat/completions?a=1&b=%20",
        "/v1/%252e%252e/admin": "/tenant-a/v1/%252e%252e/admin",
        "/v1/models%3Fx=1": "/tenant-a/v1/models%3Fx=1",
        "/v1/models/a%23b": "/tenant-a/v1/models/a%23b",
        "/v1/...": "/tenant-a/v1/...",
        "/v1/models/caf%C3%A9": "/tenant-a/v1/models/caf%C3%A9",
    }
    async with _stack(keys=True) as (port, recorder):
        for target, forwarded in cases.items():
            recorder.seen.clear()
            status, payload = await _send(port, "GET", target, key=True)
            assert status == 200, (target, payload)
            assert recorder.seen == [(forwarded, f"Bearer {UPSTREAM_KEY}")], target
