"""No request target or header can aim the proxy at a host other than its configured upstreams:
absolute-form targets, CONNECT, `//host` paths, userinfo/percent tricks, Host / X-Forwarded-Host /
X-Forwarded-Proto / Forwarded, all on raw sockets, with a second local "evil" server that must
see zero requests while the real upstream sees only its own Host."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from tests.proxy.fakes import FakeUpstream, proxy_stack
from tests.proxy.test_forwarding import single

EVIL = "EVIL"  # replaced by the evil server's host:port


def _targets() -> list[tuple[str, str, dict[str, str]]]:
    chat = "/v1/chat/completions"
    forwarded = {
        "X-Forwarded-Host": EVIL, "X-Forwarded-Proto": "https", "X-Forwarded-Port": "1",
        "Forwarded": f"for=1.2.3.4;host={EVIL};proto=https", "X-Original-URL": f"http://{EVIL}/v1",
        "X-Rewrite-URL": f"http://{EVIL}/v1/models",
    }  # fmt: skip
    return [
        ("GET", f"http://{EVIL}/v1/models", {}),
        ("POST", f"http://{EVIL}{chat}", {}),
        ("GET", f"https://{EVIL}/v1/models", {}),
        ("GET", f"http://user@{EVIL}/v1/models", {}),
        ("CONNECT", EVIL, {}),
        ("GET", f"//{EVIL}/v1/models", {}),
        ("GET", f"/v1/@{EVIL}/models", {}),
        ("GET", f"/v1/%2F%2F{EVIL}/models", {}),
        ("GET", f"/v1/..%2F..%2F{EVIL}%2Fv1%2Fmodels", {}),
        ("GET", f"/v1/models?url=http://{EVIL}/", {}),
        ("GET", "/v1/models", {"Host": EVIL}),
        ("POST", chat, {"Host": EVIL, **forwarded}),
        ("GET", "/v1/models", forwarded),
    ]


async def _send(port: int, method: str, target: str, headers: dict[str, str]) -> bytes:
    body = b'{"model": "m", "messages": []}' if method == "POST" else b""
    lines = [f"{method} {target} HTTP/1.1"]
    if "Host" not in headers:
        lines.append(f"Host: 127.0.0.1:{port}")
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write("\r\n".join(lines).encode() + body)
        async with asyncio.timeout(5):
            return await reader.read()  # Connection: close: read to EOF
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    _targets(),
    ids=[f"{m} {t} {sorted(h)}" for m, t, h in _targets()],
)
async def test_only_the_configured_upstream_is_ever_reached(
    method: str, target: str, headers: dict[str, str]
) -> None:
    seen: list[str] = []

    async def evil_handler(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.path_qs}")
        return web.Response(status=200, body=b'{"evil": true}', content_type="application/json")

    evil_app = web.Application()
    evil_app.router.add_route("*", "/{tail:.*}", evil_handler)
    evil = web.AppRunner(evil_app, access_log=None)
    await evil.setup()
    await web.TCPSite(evil, "127.0.0.1", 0).start()
    evil_host = f"127.0.0.1:{evil.addresses[0][1]}"
    fake = FakeUpstream()
    try:
        async with proxy_stack(single(), [fake]) as stack:
            port = int(stack.proxy_url.rsplit(":", 1)[1])
            headers = {k: v.replace(EVIL, evil_host) for k, v in headers.items()}
            response = await _send(port, method, target.replace(EVIL, evil_host), headers)
            status = int(response.split(b" ", 2)[1])
            assert b'"evil"' not in response
            assert status < 500 or status == 502, response[:200]  # never a crash
            up_host = fake.url.split("/")[2]
            # Whatever was forwarded went to the configured upstream with its own Host (the
            # evil host:port may appear in the path or query there, as opaque text).
            for seen_by_upstream in fake.requests:
                assert seen_by_upstream.headers["Host"] == up_host, seen_by_upstream.headers
        await asyncio.sleep(0.05)
        assert seen == [], seen
    finally:
        await evil.cleanup()
