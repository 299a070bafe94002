"""One error middleware: an unexpected exception on any route is an OpenAI-style 500, counted in
tbg_internal_errors_total{where}, and logged with its stack frames but never its message."""

from __future__ import annotations

import io
import logging

import httpx
import orjson
import pytest
from aiohttp import web

from proxy import app as app_module
from proxy.app import make_app, make_runner
from proxy.config import build_config
from proxy.keys import REGISTRY
from proxy.logs import JsonFormatter

SECRET = "the prompt text that must never reach a log"


async def test_unexpected_exception_is_an_openai_error_counted_and_logged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def boom(_request: web.Request) -> web.Response:
        raise KeyError(SECRET)

    monkeypatch.setattr(app_module, "_healthz", boom)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tbg.proxy")
    logger.addHandler(handler)
    config = build_config({"upstreams": [{"name": "u", "base_url": "http://127.0.0.1:9/v1"}]}, {})
    app = make_app(config)
    runner = make_runner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        async with httpx.AsyncClient() as http:
            r = await http.get(f"http://127.0.0.1:{port}/healthz")
            again = await http.get(f"http://127.0.0.1:{port}/readyz")  # the app keeps serving
    finally:
        logger.removeHandler(handler)
        await runner.cleanup()
    assert r.status_code == 500 and r.headers["content-type"].startswith("application/json")
    assert orjson.loads(r.content)["error"]["code"] == "internal_error"
    assert SECRET not in r.text
    assert again.status_code == 200
    value = app[REGISTRY].get_sample_value("tbg_internal_errors_total", {"where": "handler"})
    assert value == 1.0
    record = orjson.loads(stream.getvalue().splitlines()[-1])
    assert record["msg"] == "internal error" and record["exc_type"] == "KeyError"
    assert record["route"] == "/healthz"
    assert any(f["function"] == "boom" for f in record["exc_frames"])
    assert SECRET not in stream.getvalue()
