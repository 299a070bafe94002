"""A fake OpenAI-compatible upstream (aiohttp on 127.0.0.1) with fault injection, and helpers that
run it together with the proxy on real loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from proxy.app import make_app, make_runner
from proxy.config import Config
from proxy.probe import PROBE_USER_AGENT
from proxy.tap import Tap


def _chunk(obj: str, payload: dict[str, Any]) -> bytes:
    base = {"id": "x1", "object": obj, "created": 1, "model": "m"}
    return b"data: " + orjson.dumps({**base, **payload}) + b"\n\n"


CHAT_EVENTS: tuple[bytes, ...] = (
    _chunk(
        "chat.completion.chunk",
        {
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            ]
        },
    ),
    _chunk(
        "chat.completion.chunk",
        {"choices": [{"index": 0, "delta": {"content": "Hé"}, "finish_reason": None}]},
    ),
    _chunk(
        "chat.completion.chunk",
        {"choices": [{"index": 0, "delta": {"content": "llo ☃"}, "finish_reason": None}]},
    ),
    _chunk(
        "chat.completion.chunk", {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    ),
    _chunk(
        "chat.completion.chunk",
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}},
    ),
    b"data: [DONE]\n\n",
)
COMPLETION_EVENTS: tuple[bytes, ...] = (
    _chunk(
        "text_completion",
        {"choices": [{"index": 0, "text": "Hé", "logprobs": None, "finish_reason": None}]},
    ),
    _chunk(
        "text_completion",
        {"choices": [{"index": 0, "text": "llo", "logprobs": None, "finish_reason": "length"}]},
    ),
    b"data: [DONE]\n\n",
)
# Deliberately odd spacing: any re-serialisation by the proxy would change these bytes.
CHAT_BODY = (
    b'{"id": "chatcmpl-1",  "object": "chat.completion", "created": 1, "model": "m",\n'
    b' "choices": [{"index": 0, "message": {"role": "assistant", "content": "H\xc3\xa9llo"},'
    b' "logprobs": null, "finish_reason": "stop"}],'
    b' "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}'
)
COMPLETION_BODY = (
    b'{"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",'
    b' "choices": [{"index": 0, "text": "H\xc3\xa9llo", "logprobs": null,'
    b' "finish_reason": "stop"}], "usage": {"prompt_tokens": 3, "completion_tokens": 2,'
    b' "total_tokens": 5}}'
)
EMBEDDING_BODY = (
    b'{"object": "list", "data": [{"object": "embedding", "index": 0,'
    b' "embedding": [0.25, -0.5, 1.0]}], "model": "m",'
    b' "usage": {"prompt_tokens": 2, "total_tokens": 2}}'
)


@dataclass
class Recorded:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    peer: Any


@dataclass
class FakeUpstream:
    """Serves /v1/* like a tiny OpenAI server. Faults come from the `x-fault` request header."""

    name: str = "up"
    models: tuple[str, ...] = ("m",)
    # Streaming: the raw pieces written one by one (default: one piece per event).
    pieces: list[bytes] | None = None
    piece_delay: float = 0.0
    # When set, the stream waits on it after the first piece (the test releases it).
    gate: asyncio.Event | None = None
    requests: list[Recorded] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.headers.get("User-Agent") == PROBE_USER_AGENT:  # the proxy's readiness probe
            return await self._respond(request, body)
        self.requests.append(
            Recorded(
                request.method,
                request.path,
                request.query_string,
                dict(request.headers),
                body,
                request.transport.get_extra_info("peername") if request.transport else None,
            )
        )
        self.started.set()
        try:
            return await self._respond(request, body)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def _respond(self, request: web.Request, body: bytes) -> web.StreamResponse:
        fault = request.headers.get("x-fault", "")
        tail = request.match_info["tail"]
        if fault == "sleep":
            await asyncio.sleep(30)
        if fault == "reset":
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        if fault == "teapot":
            return web.Response(
                status=418,
                body=b'{"error": {"message": "short and stout"}}',
                content_type="application/json",
                headers={"X-Custom": "kept", "Keep-Alive": "timeout=5"},
            )
        if tail == "models":
            data = [{"id": m, "object": "model", "owned_by": self.name} for m in self.models]
            return web.Response(
                body=orjson.dumps({"object": "list", "data": data}), content_type="application/json"
            )
        if tail == "embeddings":
            return web.Response(body=EMBEDDING_BODY, content_type="application/json")
        if tail == "responses" and self.pieces is not None and orjson.loads(body).get("stream"):
            return await self._stream(request, self.pieces, fault)  # the pieces the test gives
        if tail in ("chat/completions", "completions"):
            parsed = orjson.loads(body)
            if parsed.get("stream"):
                events = CHAT_EVENTS if tail == "chat/completions" else COMPLETION_EVENTS
                return await self._stream(request, self.pieces or list(events), fault)
            if fault == "hold":
                await asyncio.Event().wait()
            return web.Response(
                body=CHAT_BODY if tail == "chat/completions" else COMPLETION_BODY,
                content_type="application/json",
            )
        return web.Response(
            status=200,
            body=orjson.dumps({"path": tail, "query": request.query_string}),
            content_type="application/json",
        )

    async def _stream(
        self, request: web.Request, pieces: list[bytes], fault: str
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        for i, piece in enumerate(pieces):
            await resp.write(piece)
            if i == 0 and fault == "reset-mid":
                assert request.transport is not None
                request.transport.abort()
                return resp
            if i == 0 and self.gate is not None:
                await self.gate.wait()
            elif self.piece_delay:
                await asyncio.sleep(self.piece_delay)
        await resp.write_eof()
        return resp


@dataclass
class Stack:
    fakes: list[FakeUpstream]
    proxy_url: str  # http://127.0.0.1:PORT (append /v1 for the SDK)
    app: web.Application
    runner: web.AppRunner


async def _serve_fake(fake: FakeUpstream) -> web.AppRunner:
    app = web.Application()
    app.router.add_route("*", "/v1/{tail:.*}", fake.handle)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    return runner


@contextlib.asynccontextmanager
async def proxy_stack(
    make_config: Callable[[list[str]], Config],
    fakes: list[FakeUpstream] | None = None,
    tap: Tap | None = None,
) -> AsyncIterator[Stack]:
    """Start the fake upstreams and the proxy (configured from their URLs) on 127.0.0.1."""
    fakes = fakes if fakes is not None else [FakeUpstream()]
    fake_runners = [await _serve_fake(f) for f in fakes]
    config = make_config([f.url for f in fakes])
    app = make_app(config, tap=tap)
    runner = make_runner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield Stack(fakes, f"http://127.0.0.1:{runner.addresses[0][1]}", app, runner)
    finally:
        await runner.cleanup()
        for r in fake_runners:
            await r.cleanup()


@contextlib.contextmanager
def threaded_stack(
    make_config: Callable[[list[str]], Config], fakes: list[FakeUpstream] | None = None
) -> Iterator[Stack]:
    """The same stack on an event loop in a background thread, for the synchronous SDK."""
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def main() -> None:
        stop = asyncio.Event()
        holder["stop"], holder["loop"] = stop, asyncio.get_running_loop()
        async with proxy_stack(make_config, fakes) as stack:
            holder["stack"] = stack
            ready.set()
            await stop.wait()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced to the test below
            holder["error"] = exc
            ready.set()

    thread = threading.Thread(target=run, name="tbg-test-stack", daemon=True)
    thread.start()
    ready.wait(10)
    if "error" in holder:
        raise holder["error"]
    try:
        yield holder["stack"]
    finally:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(10)
