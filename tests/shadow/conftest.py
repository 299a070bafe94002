"""Fixtures for the shadow path: a controllable fake upstream (fault injection only) and the real
proxy app on loopback sockets."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web

from proxy.app import make_app, make_runner
from proxy.config import build_config
from proxy.shadow.tap import ShadowTap
from proxy.shadow.wiring import SHADOW

TOKENS = ["Hello", ",", " world", None, "!"]  # None: the near-tie position
TIE = (" A", " B")


@dataclass
class FakeLLM:
    """Deterministic OpenAI-compatible upstream. Position 3 is a near-tie whose winner flips on the
    replays listed in `flip_replays` (replays counted in arrival order; a replay is a request with
    `max_tokens`, which the tests' primaries never send). Replays can be made to fail or to wait."""

    flip_replays: set[int] = field(default_factory=set)
    fail_replays: Callable[[int], bool] = lambda _i: False
    replay_delay: float = 0.0
    calls: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    replays: int = 0
    reject_logprobs: bool = False  # answer 400 to any request asking for logprobs
    running: int | None = None  # exposed as vllm:num_requests_running on GET /metrics
    tokens_per_chunk: int = 1  # a stream chunk may carry several tokens, as vLLM's often do
    fingerprint: str | None = None  # sent as system_fingerprint (top level; every stream chunk)

    def answer(self, replay: int | None) -> list[str]:
        winner = TIE[1] if replay in self.flip_replays else TIE[0]
        return [winner if t is None else t for t in TOKENS]

    def _chat_lp(self, tokens: list[str], k: int) -> dict[str, Any]:
        content = []
        for pos, tok in enumerate(tokens):
            if pos == 3:
                other = TIE[1] if tok == TIE[0] else TIE[0]
                tops = [(tok, -0.69), (other, -0.70)]
            else:
                tops = [(tok, -0.01), ("zz", -5.0)]
            tops += [(f"t{j}", -8.0 - j) for j in range(max(0, k - 2))]
            content.append({
                "token": tok, "logprob": tops[0][1], "bytes": list(tok.encode()),
                "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())}
                                 for t, lp in tops[:k]],
            })  # fmt: skip
        return {"content": content}

    def _cmpl_lp(self, tokens: list[str], k: int) -> dict[str, Any]:
        tops = []
        for pos, tok in enumerate(tokens):
            if pos == 3:
                other = TIE[1] if tok == TIE[0] else TIE[0]
                tops.append({tok: -0.69, other: -0.70})
            else:
                tops.append({tok: -0.01, "zz": -5.0})
        return {
            "tokens": tokens, "token_logprobs": [next(iter(t.values())) for t in tops],
            "top_logprobs": tops, "text_offset": [0] * len(tokens),
        }  # fmt: skip

    def app(self) -> web.Application:
        async def handle(request: web.Request) -> web.StreamResponse:
            body = orjson.loads(await request.read())
            self.calls.append(body)
            self.headers.append(dict(request.headers))
            chat = request.path.endswith("/chat/completions")
            if chat and not isinstance(body.get("messages"), list):
                return web.json_response({"error": {"message": "messages must be a list",
                                                     "type": "invalid_request_error",
                                                     "code": None}}, status=400)  # fmt: skip
            if self.reject_logprobs and body.get("logprobs") not in (None, False):
                return web.json_response({"error": {"message": "logprobs unsupported",
                                                     "type": "invalid_request_error",
                                                     "code": None}}, status=400)  # fmt: skip
            replay: int | None = None
            if body.get("max_tokens") is not None:
                replay = self.replays
                self.replays += 1
            if replay is not None and self.replay_delay:
                await asyncio.sleep(self.replay_delay)
            if replay is not None and self.fail_replays(replay):
                return web.json_response({"error": {"message": "boom", "type": "server_error",
                                                     "code": None}}, status=500)  # fmt: skip
            tokens = self.answer(replay)[: int(body.get("max_tokens") or 99)]
            if chat:
                want = body.get("logprobs") is True
                lp = self._chat_lp(tokens, int(body.get("top_logprobs") or 2)) if want else None
            else:
                want = body.get("logprobs") is not None
                lp = self._cmpl_lp(tokens, int(body["logprobs"])) if want else None
            usage = {"prompt_tokens": 4, "completion_tokens": len(tokens),
                     "total_tokens": 4 + len(tokens)}  # fmt: skip
            if not body.get("stream"):
                choice: dict[str, Any] = {"index": 0, "logprobs": lp, "finish_reason": "stop"}
                if chat:
                    choice["message"] = {"role": "assistant", "content": "".join(tokens)}
                else:
                    choice["text"] = "".join(tokens)
                payload = {"id": "fake-1", "object": "x", "created": 7, "model": body["model"],
                           "choices": [choice], "usage": usage}  # fmt: skip
                if self.fingerprint is not None:
                    payload["system_fingerprint"] = self.fingerprint
                return web.Response(body=orjson.dumps(payload), content_type="application/json")
            out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await out.prepare(request)
            if self.tokens_per_chunk > 1 and lp is None:  # several tokens' text per chunk
                n = self.tokens_per_chunk
                tokens = ["".join(tokens[i : i + n]) for i in range(0, len(tokens), n)]
            for i, tok in enumerate(tokens):
                piece: Any = None
                if lp is not None and chat:
                    piece = {"content": [lp["content"][i]]}
                elif lp is not None:
                    piece = {key: [lp[key][i]] for key in lp}
                c: dict[str, Any] = {"index": 0, "logprobs": piece,
                                     "finish_reason": "stop" if i == len(tokens) - 1 else None}  # fmt: skip
                if chat:
                    c["delta"] = {"content": tok}
                else:
                    c["text"] = tok
                chunk = {"id": "fake-1", "created": 7, "model": body["model"], "choices": [c]}
                if self.fingerprint is not None:
                    chunk["system_fingerprint"] = self.fingerprint
                await out.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
            if (body.get("stream_options") or {}).get("include_usage"):
                tail = {"id": "fake-1", "created": 7, "model": body["model"], "choices": [],
                        "usage": usage}  # fmt: skip
                await out.write(b"data: " + orjson.dumps(tail) + b"\n\n")
            await out.write(b"data: [DONE]\n\n")
            await out.write_eof()
            return out

        async def metrics(_request: web.Request) -> web.Response:
            text = f'vllm:num_requests_running{{model_name="m"}} {self.running}\n'
            return web.Response(
                text=text if self.running is not None else "", content_type="text/plain"
            )

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_post("/v1/chat/completions", handle)
        app.router.add_post("/v1/completions", handle)
        return app


async def serve(
    app: web.Application, runner: web.AppRunner | None = None
) -> tuple[str, web.AppRunner]:
    runner = runner or web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return f"http://127.0.0.1:{port}", runner


@dataclass
class Stack:
    fake: FakeLLM
    upstream_url: str  # .../v1
    proxy_url: str  # .../v1
    tap: ShadowTap
    app: web.Application


StackFactory = Callable[..., "asyncio.Future[Stack]"]


def worker_env() -> dict[str, str]:
    """TBG_SHADOW_WORKER* from the test process's environment, for the configs tests build with
    an injected environment: the worker-process tests (and a whole run under
    TBG_SHADOW_WORKER=process) reach them this way."""
    return {k: v for k, v in os.environ.items() if k.startswith("TBG_SHADOW_WORKER")}


@pytest.fixture
async def make_stack() -> AsyncIterator[Callable[..., Any]]:
    runners: list[web.AppRunner] = []

    async def factory(fake: FakeLLM | None = None, shadow: dict[str, Any] | None = None,
                      upstream: dict[str, Any] | None = None,
                      env: dict[str, str] | None = None) -> Stack:  # fmt: skip
        fake = fake or FakeLLM()
        base, runner = await serve(fake.app())
        runners.append(runner)
        shadow_cfg = {"enabled": True, "sample_rate": 1.0, "replays": 2,
                      "replays_per_minute": 1e6, "tokens_per_minute": 1e9, **(shadow or {})}  # fmt: skip
        up = {"name": "fake", "base_url": f"{base}/v1", "models": ["m"], **(upstream or {})}
        environ = {"FAKE_KEY": "sk-up", **worker_env(), **(env or {})}  # injected
        config = build_config({"upstreams": [up], "shadow": shadow_cfg}, environ)
        app = make_app(config)
        proxy, prunner = await serve(app, make_runner(app))
        runners.append(prunner)
        return Stack(fake, f"{base}/v1", f"{proxy}/v1", app[SHADOW], app)

    yield factory
    for runner in reversed(runners):
        await runner.cleanup()
