"""One error middleware: every route answers OpenAI-style errors; bugs are 500s, counted and
logged with their stack frames but never their messages (which could carry prompt text)."""

from __future__ import annotations

import logging
import sys
from typing import Any

import httpx
import openai
import orjson
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy.errors import error_middleware
from proxy.forward import Forwarder
from proxy.logs import JsonFormatter
from tests.proxy.fakes import proxy_stack
from tests.proxy.test_forwarding import sample, single

SECRET = "secret prompt text"


def _error(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["Content-Type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert set(error) >= {"message", "type", "code"}
    return error


async def test_a_bug_in_a_handler_is_a_counted_500_with_frames_in_the_log(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(self: Forwarder, request: Any, route: str) -> None:
        raise KeyError(SECRET)

    monkeypatch.setattr(Forwarder, "_check_auth", broken)
    async with proxy_stack(single()) as stack:
        client = openai.AsyncOpenAI(base_url=stack.proxy_url + "/v1", api_key="sk", max_retries=0)
        with (
            caplog.at_level(logging.ERROR, logger="proxy.errors"),
            pytest.raises(openai.InternalServerError) as info,
        ):
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": SECRET}]
            )
        await client.close()
        assert info.value.status_code == 500
        body = info.value.body
        assert isinstance(body, dict) and body["code"] == "internal_error"
        assert SECRET not in str(body)
        assert sample(stack.app, "tbg_internal_errors_total", where="v1") == 1
        assert sample(stack.app, "tbg_internal_errors_total", where="metrics") == 0
        # the next request works
        async with httpx.AsyncClient() as http:
            assert (await http.get(stack.proxy_url + "/healthz")).status_code == 200
    records = [r for r in caplog.records if r.name == "proxy.errors"]
    assert len(records) == 1
    line = JsonFormatter().format(records[0])
    entry = orjson.loads(line)
    assert entry["exc_type"] == "KeyError" and entry["where"] == "v1"
    functions = [f["function"] for f in entry["exc_frames"]]
    assert functions[-1] == "broken" and all(
        {"file", "line"} <= set(f) for f in entry["exc_frames"]
    )
    assert SECRET not in line


async def test_every_route_answers_errors_in_the_openai_shape() -> None:
    async with proxy_stack(single()) as stack:
        async with httpx.AsyncClient() as http:
            r = await http.get(stack.proxy_url + "/nope")
            assert (r.status_code, _error(r)["code"]) == (404, "not_found")
            r = await http.post(stack.proxy_url + "/metrics", content=b"x")
            assert (r.status_code, _error(r)["code"]) == (404, "not_found")
            r = await http.post(stack.proxy_url + "/v1/chat/completions", content=b"[1]")
            assert (r.status_code, _error(r)["code"]) == (400, "invalid_json")
        assert sample(stack.app, "tbg_internal_errors_total", where="other") == 0


def test_formatter_never_writes_exception_messages() -> None:
    try:
        raise ValueError(SECRET)
    except ValueError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "boom", None, None)
        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    assert SECRET not in line and orjson.loads(line)["exc_frames"][0]["function"] == (
        "test_formatter_never_writes_exception_messages"
    )


async def test_aiohttp_http_errors_keep_their_status_in_the_openai_shape() -> None:
    registry = CollectorRegistry()

    async def forbidden(request: web.Request) -> web.Response:
        raise web.HTTPForbidden()

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/elsewhere")

    app = web.Application(middlewares=[error_middleware(registry)])
    app.router.add_get("/forbidden", forbidden)
    app.router.add_get("/redirect", redirect)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with httpx.AsyncClient() as http:
            r = await http.get(base + "/forbidden")
            assert (r.status_code, _error(r)["code"]) == (403, "forbidden")
            r = await http.post(base + "/forbidden")  # aiohttp's own 405
            assert (r.status_code, _error(r)["code"]) == (405, "method_not_allowed")
            r = await http.get(base + "/redirect")
            assert r.status_code == 302  # not an error: passed through
        assert registry.get_sample_value("tbg_internal_errors_total", {"where": "other"}) == 0
    finally:
        await runner.cleanup()
