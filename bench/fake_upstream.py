"""A fast, deterministic OpenAI-compatible upstream for benchmarks (not a test oracle).

`python -m bench.fake_upstream --port P [--tokens N] [--delay-ms D]`: chat and completions,
streaming or not, with logprobs when asked; every answer is the same N tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import orjson
from aiohttp import web

WORDS = ("The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", ".")


def _tokens(n: int) -> list[str]:
    return [WORDS[i % len(WORDS)] for i in range(n)]


def _chat_logprobs(tokens: list[str], k: int) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": t,
                "logprob": -0.01,
                "bytes": list(t.encode()),
                "top_logprobs": [
                    {"token": t if j == 0 else f"alt{j}", "logprob": -0.01 - 2.0 * j, "bytes": None}
                    for j in range(k)
                ],
            }
            for t in tokens
        ]
    }


def make_app(n_tokens: int, delay_s: float) -> web.Application:
    async def completion(request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        chat = request.path.endswith("/chat/completions")
        n = min(n_tokens, int(body.get("max_tokens") or n_tokens))
        tokens = _tokens(n)
        if delay_s:
            await asyncio.sleep(delay_s)
        if chat:
            k = int(body.get("top_logprobs") or 0) if body.get("logprobs") else 0
            lp = _chat_logprobs(tokens, max(k, 1)) if body.get("logprobs") else None
        else:
            k = body.get("logprobs")
            lp = (
                {"tokens": tokens, "token_logprobs": [-0.01] * n,
                 "top_logprobs": [{t: -0.01} for t in tokens], "text_offset": list(range(n))}
                if k is not None else None
            )  # fmt: skip
        usage = {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": 5 + n}
        created = int(time.time())
        if not body.get("stream"):
            choice: dict[str, Any] = {"index": 0, "logprobs": lp, "finish_reason": "length"}
            if chat:
                choice["message"] = {"role": "assistant", "content": "".join(tokens)}
            else:
                choice["text"] = "".join(tokens)
            obj = "chat.completion" if chat else "text_completion"
            payload = {"id": "bench-1", "object": obj, "created": created, "model": body.get("model"),
                       "choices": [choice], "usage": usage}  # fmt: skip
            return web.Response(body=orjson.dumps(payload), content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i, t in enumerate(tokens):
            piece_lp = None
            if lp is not None and chat:
                piece_lp = {"content": [lp["content"][i]]}
            elif lp is not None:
                piece_lp = {"tokens": [t], "token_logprobs": [-0.01], "top_logprobs": [{t: -0.01}],
                            "text_offset": [i]}  # fmt: skip
            finish = "length" if i == n - 1 else None
            choice = {"index": 0, "logprobs": piece_lp, "finish_reason": finish}
            if chat:
                choice["delta"] = {"content": t}
            else:
                choice["text"] = t
            chunk = {
                "id": "bench-1",
                "created": created,
                "model": body.get("model"),
                "choices": [choice],
            }
            await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def models(_request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "bench", "object": "model"}]})

    async def health(_request: web.Request) -> web.Response:
        return web.Response(text="ok")  # vllm-router probes GET /health

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_post("/v1/chat/completions", completion)
    app.router.add_post("/v1/completions", completion)
    app.router.add_get("/v1/models", models)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    ns = parser.parse_args()
    web.run_app(make_app(ns.tokens, ns.delay_ms / 1000), host="127.0.0.1", port=ns.port,
                print=None, access_log=None)  # fmt: skip


if __name__ == "__main__":
    main()
