"""An OpenAI-compatible chat upstream whose temperature-0 answers are true Boltzmann samples at a
known temperature: a serving stack with a known T_bg, for coverage studies through the real proxy.

Every request is answered by `bench.truth.TruthModel` sampled at `temperature` whatever the request
asks (that is what a nondeterministic stack does at T = 0); the prompt id is a hash of the messages,
so a primary and its replays share logits along their common prefix. Raw T=1 logprobs and
`top_logprobs` (k capped at the model's top_k) as vLLM reports them; streaming with per-chunk logprobs.

    python -m bench.truth_upstream --temperature 0.05 --port 8000     # standalone
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
from typing import Any

import numpy as np
import orjson
from aiohttp import web

from bench.truth import GapLaw, TruthModel


def _prompt_id(messages: Any) -> int:
    digest = hashlib.blake2b(orjson.dumps(messages, option=orjson.OPT_SORT_KEYS), digest_size=8)
    return int.from_bytes(digest.digest(), "little") % (1 << 40)


class TruthUpstream:
    def __init__(
        self, temperature: float, *, law: GapLaw = "lognormal", top_k: int = 5, seed: int = 0
    ) -> None:
        self.temperature = temperature
        self.model = TruthModel(law=law, top_k=top_k, seed=seed)
        self._rng = np.random.default_rng(seed + 1)
        self._ids = itertools.count()
        self.requests = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        return app

    async def _models(self, _request: web.Request) -> web.Response:
        body = {"object": "list", "data": [{"id": "truth", "object": "model", "owned_by": "bench"}]}
        return web.json_response(body)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json(loads=orjson.loads)
        self.requests += 1
        length = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
        run = self.model.run(self._rng, _prompt_id(body.get("messages")), length, self.temperature)
        k = int(body.get("top_logprobs") or 0) if body.get("logprobs") else -1
        content = []
        for s, tok in enumerate(run.tokens):
            assert run.logprobs is not None and run.top_logprobs is not None
            tops = run.top_logprobs[s][: max(k, 0)]
            content.append(
                {
                    "token": tok,
                    "logprob": run.logprobs[s],
                    "bytes": list(tok.encode()),
                    "top_logprobs": [
                        {"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in tops
                    ],
                }
            )
        pieces = [f"{t} " for t in run.tokens]
        rid = f"truth-{next(self._ids)}"
        usage = {"prompt_tokens": 8, "completion_tokens": length, "total_tokens": 8 + length}
        if not body.get("stream"):
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(pieces)},
                "logprobs": {"content": content} if k >= 0 else None,
                "finish_reason": "length",
            }
            payload = {"id": rid, "object": "chat.completion", "created": 1, "model": "truth",
                       "choices": [choice], "usage": usage}  # fmt: skip
            return web.Response(body=orjson.dumps(payload), content_type="application/json")
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        for s, piece in enumerate(pieces):
            c = {
                "index": 0,
                "delta": {"content": piece},
                "logprobs": {"content": [content[s]]} if k >= 0 else None,
                "finish_reason": "length" if s == len(pieces) - 1 else None,
            }
            chunk = {"id": rid, "object": "chat.completion.chunk", "created": 1, "model": "truth",
                     "choices": [c]}  # fmt: skip
            await out.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        await out.write(b"data: [DONE]\n\n")
        await out.write_eof()
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--temperature", type=float, required=True)
    ap.add_argument("--law", default="lognormal")
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--port", type=int, default=8000)
    a = ap.parse_args()
    up = TruthUpstream(a.temperature, law=a.law, top_k=a.top_k)
    web.run_app(up.app(), host="127.0.0.1", port=a.port)


if __name__ == "__main__":
    main()
