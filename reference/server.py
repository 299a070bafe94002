"""The OpenAI-compatible aiohttp app: routes, streaming, error translation, lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from reference.engine import Engine, Job, TokenEvent
from reference.fingerprint import system_fingerprint
from reference.metrics import CONTENT_TYPE, VllmMetrics
from reference.model import LoadedModel
from reference.policy import DecodePolicy
from reference.requests import (
    ApiError,
    GenerationRequest,
    parse_chat,
    parse_completion,
    parse_json,
)
from reference.responses import (
    Envelope,
    first_chat_chunk,
    full_response,
    token_chunk,
    usage_chunk,
)
from reference.responses_api import EventStream, ResponseEnvelope, parse_responses, response_object
from reference.scheduler import BatchPolicy, Scheduler
from reference.tools import as_tool_call, as_tool_chunk, forced_tool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerConfig:
    model_name: str = "smollm2"
    mode: str = "batched"
    batching: BatchPolicy = field(default_factory=BatchPolicy)
    default_max_tokens: int = 256
    max_context: int = 2048


@dataclass(frozen=True)
class _State:
    config: ServerConfig
    engine: Engine
    scheduler: Scheduler
    metrics: VllmMetrics
    started: int
    fingerprint: str | None = None  # system_fingerprint (reference.fingerprint)


STATE: web.AppKey[_State] = web.AppKey("reference_state", _State)


def _error(err: ApiError) -> web.Response:
    return web.Response(
        body=orjson.dumps(err.body()), status=err.status, content_type="application/json"
    )


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Any]
) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except ApiError as err:
        return _error(err)
    except web.HTTPException as exc:
        if exc.status >= 400:
            return _error(ApiError(exc.status, exc.reason))
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as exc:
        log.exception("unhandled error on %s", request.path)
        return _error(ApiError(500, f"internal error: {type(exc).__name__}: {exc}"))


def _prompt_ids(state: _State, req: GenerationRequest) -> tuple[int, ...]:
    tokenizer = state.engine.loaded.tokenizer
    if req.prompt_ids is not None:
        vocab = int(state.engine.loaded.model.config.vocab_size)
        if any(not 0 <= t < vocab for t in req.prompt_ids):
            raise ApiError(400, f"prompt token ids must be in [0, {vocab})", "prompt")
        return req.prompt_ids
    if req.kind == "chat":
        text = tokenizer.apply_chat_template(
            [dict(m) for m in req.messages], add_generation_prompt=True, tokenize=False
        )
    else:
        text = req.prompt_text or ""
    return tuple(int(t) for t in tokenizer(str(text), add_special_tokens=False)["input_ids"])


async def _job(state: _State, req: GenerationRequest) -> Job:
    """The request's decode job (its prompt within the context), not yet submitted."""
    ids = await asyncio.to_thread(_prompt_ids, state, req)
    room = state.config.max_context - len(ids)
    if room < 1:
        raise ApiError(400, f"prompt of {len(ids)} tokens exceeds the context", "messages")
    params = req.params
    if params.max_tokens > room:
        if params.max_tokens != state.config.default_max_tokens:
            raise ApiError(
                400,
                f"max_tokens {params.max_tokens} + prompt {len(ids)} exceeds the context of "
                f"{state.config.max_context}",
                "max_tokens",
            )
        params = dataclasses.replace(params, max_tokens=room)
    return Job(ids, params, asyncio.get_running_loop())


async def _generate(request: web.Request, kind: str) -> web.StreamResponse:
    state = request.app[STATE]
    body = parse_json(await request.read())
    parse = parse_chat if kind == "chat" else parse_completion
    req = parse(body, state.config.model_name, state.config.default_max_tokens)
    tool = forced_tool(body) if kind == "chat" else None  # reference/tools.py
    job = await _job(state, req)
    ids = job.prompt_ids
    params = job.params
    prefix = "chatcmpl" if kind == "chat" else "cmpl"
    env = Envelope(
        kind, f"{prefix}-{secrets.token_hex(16)}", int(time.time()), req.model, req.tokens_as_ids,
        state.fingerprint,
    )  # fmt: skip
    with_lp = params.top_logprobs is not None
    state.scheduler.submit(job)
    try:
        if req.stream:
            return await _stream(request, state, job, env, with_lp, req.include_usage, tool)
        events = [ev async for ev in _events(job)]
        state.metrics.finished(events[-1].finish_reason or "stop")
        answer = full_response(env, events, with_lp, len(ids))
        answer = as_tool_call(answer, tool) if tool is not None else answer
        return web.json_response(answer, dumps=lambda o: orjson.dumps(o).decode())
    finally:
        job.cancelled.set()  # no-op when finished; stops decoding when the client went away


async def _events(job: Job) -> AsyncIterator[TokenEvent]:
    while True:
        item = await job.events.get()
        if isinstance(item, ConnectionAbortedError):
            raise ApiError(503, f"generation aborted: {item}")
        if isinstance(item, BaseException):
            raise ApiError(500, f"generation failed: {item}")
        yield item
        if item.finish_reason is not None:
            return


async def _stream(
    request: web.Request,
    state: _State,
    job: Job,
    env: Envelope,
    with_lp: bool,
    include_usage: bool,
    tool: str | None = None,
) -> web.StreamResponse:
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)

    async def send(obj: dict[str, Any], first: bool = False) -> None:
        if tool is not None and "choices" in obj:
            obj = as_tool_chunk(obj, tool, first)
        await resp.write(b"data: " + orjson.dumps(obj) + b"\n\n")

    offset = 0
    generated = 0
    try:
        if env.kind == "chat":
            await send(first_chat_chunk(env, include_usage), first=True)
        try:
            async for ev in _events(job):
                generated += 1
                await send(token_chunk(env, ev, with_lp, offset, include_usage))
                offset += len(ev.token.text) if ev.token is not None else 0
                if ev.finish_reason is not None:
                    state.metrics.finished(ev.finish_reason)
        except ApiError as err:  # headers are gone: report in-band, as vLLM does
            await send(err.body())
        if include_usage:
            await send(usage_chunk(env, len(job.prompt_ids), generated))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
    except ConnectionResetError:  # the client went away; _generate cancels the decode
        state.metrics.finished("abort")
    return resp


async def chat(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "chat")


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "completions")


async def responses(request: web.Request) -> web.StreamResponse:
    """POST /v1/responses: whole, or streamed as the Responses API's typed events."""
    state = request.app[STATE]
    body = parse_json(await request.read())
    req = parse_responses(body, state.config.model_name, state.config.default_max_tokens)
    job = await _job(state, req.generation)
    env = ResponseEnvelope.new(int(time.time()), req.generation.model, req)
    state.scheduler.submit(job)
    try:
        if not req.generation.stream:
            events = [ev async for ev in _events(job)]
            state.metrics.finished(events[-1].finish_reason or "stop")
            answer = response_object(env, events, len(job.prompt_ids))
            return web.json_response(answer, dumps=lambda o: orjson.dumps(o).decode())
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        stream = EventStream(env)

        async def send(kind: str, obj: dict[str, Any]) -> None:
            await resp.write(b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n")

        try:
            for kind, obj in stream.opening():
                await send(kind, obj)
            try:
                async for ev in _events(job):
                    for kind, obj in stream.delta(ev):
                        await send(kind, obj)
                    if ev.finish_reason is not None:
                        state.metrics.finished(ev.finish_reason)
                for kind, obj in stream.closing(len(job.prompt_ids)):
                    await send(kind, obj)
            except ApiError as err:  # headers are gone: report in-band
                await send(*stream.error(err))
            await resp.write_eof()
        except ConnectionResetError:
            state.metrics.finished("abort")
        return resp
    finally:
        job.cancelled.set()


async def models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    name = state.config.model_name
    card = {
        "id": name,
        "object": "model",
        "created": state.started,
        "owned_by": "tbg-reference",
        "root": str(state.engine.loaded.folder),
        "parent": None,
        "max_model_len": state.config.max_context,
    }
    return web.json_response({"object": "list", "data": [card]})


async def health(request: web.Request) -> web.Response:
    return web.Response(text="")


async def metrics(request: web.Request) -> web.Response:
    body = request.app[STATE].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def not_found(request: web.Request) -> web.Response:
    raise ApiError(404, f"no route {request.method} {request.path}")


def fingerprint_of(config: ServerConfig, loaded: LoadedModel, policy: DecodePolicy) -> str:
    """The model and how it is served, as one system_fingerprint (reference.fingerprint)."""
    import torch

    return system_fingerprint(loaded.folder, loaded.dtype_name, config.mode, policy,
                              config.batching, str(torch.__version__))  # fmt: skip


def make_app(config: ServerConfig, loaded: LoadedModel, policy: DecodePolicy) -> web.Application:
    """Wire everything; the scheduler (task + worker thread) lives in the app's cleanup context."""
    app = web.Application(middlewares=[_errors], client_max_size=8 * 1024 * 1024)
    metrics_ = VllmMetrics(config.model_name)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        engine = Engine(loaded, policy, on_tokens=metrics_.generation_tokens.inc)
        scheduler = Scheduler(engine, config.batching, metrics_)
        await scheduler.start()
        app[STATE] = _State(config, engine, scheduler, metrics_, int(time.time()),
                            fingerprint_of(config, loaded, policy))  # fmt: skip
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                await scheduler.stop()

    async def abort_in_flight(app: web.Application) -> None:
        # Shutdown is for tests and demos: end decoding now, so waiting handlers answer at once.
        if STATE in app:
            await app[STATE].scheduler.stop()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(abort_in_flight)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/responses", responses)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app
