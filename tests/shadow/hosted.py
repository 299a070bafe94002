"""A fake OpenAI-compatible chat endpoint with the behaviours of hosted endpoints (fault injection
for tests/shadow/test_hosted_endpoints.py and the seeded tests): logprobs honoured, silently
ignored (Anthropic's OpenAI layer) or refused with a 400 (Groq); a cap on `top_logprobs`
(OpenAI: above 20 is a 400); temperature 0 turned into 1e-8 (Groq); `seed` honoured (vLLM) or
ignored.

Decoding, as an ideal stack would: below temperature 1e-5 greedy (vLLM's rule), so every run gives
GREEDY; above, each token is drawn from WORDS by a generator seeded with the request's `seed`
when the seed is honoured (the same draws every time), else by a fresh one per call.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

GREEDY = ["The", " answer", " is", " 42", "."]
WORDS = [" a", " b", " c", " d", " e", " f", " g", " h"]


def _error(message: str) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": "invalid_request_error", "code": None}}, status=400
    )


@dataclass
class HostedLLM:
    logprobs: str = "honoured"  # "honoured" | "ignored" | "rejected"
    top_logprobs_cap: int | None = None  # a 400 above it
    seed: str = "honoured"  # "honoured" | "ignored"
    zero_temperature_as: float | None = None  # Groq: 1e-8
    calls: list[dict[str, Any]] = field(default_factory=list)
    temperatures: list[float] = field(default_factory=list)  # as the endpoint decoded them
    sent: list[bytes] = field(default_factory=list)  # every answer's body, in order of calls
    _fresh: int = 0

    def tokens(self, body: dict[str, Any]) -> list[str]:
        t = body.get("temperature")
        t = 1.0 if t is None else float(t)
        if t == 0 and self.zero_temperature_as is not None:
            t = self.zero_temperature_as
        self.temperatures.append(t)
        if t < 1e-5:
            return list(GREEDY)
        seed = body.get("seed")
        if isinstance(seed, int) and self.seed == "honoured":
            rng = random.Random(seed)
        else:
            self._fresh += 1
            rng = random.Random(1_000_003 * self._fresh)
        return [rng.choice(WORDS) for _ in GREEDY]

    def _logprobs(self, tokens: list[str], k: int) -> dict[str, Any]:
        content = []
        for tok in tokens:
            tops = [(tok, -0.05)] + [(w, -3.0 - j) for j, w in enumerate(WORDS) if w != tok]
            content.append(
                {
                    "token": tok,
                    "logprob": -0.05,
                    "bytes": list(tok.encode()),
                    "top_logprobs": [
                        {"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in tops[:k]
                    ],
                }
            )
        return {"content": content}

    def app(self) -> web.Application:
        async def handle(request: web.Request) -> web.Response:
            body = orjson.loads(await request.read())
            self.calls.append(body)
            asks = body.get("logprobs") is True
            k = int(body.get("top_logprobs") or 0)
            if asks and self.logprobs == "rejected":
                self.sent.append(b"")
                return _error("logprobs are not supported with this model")
            if self.top_logprobs_cap is not None and k > self.top_logprobs_cap:
                self.sent.append(b"")
                return _error(f"top_logprobs must be at most {self.top_logprobs_cap}")
            tokens = self.tokens(body)[: int(body.get("max_tokens") or 99)]
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(tokens)},
                "finish_reason": "stop",
            }
            if self.logprobs == "honoured":  # as OpenAI and vLLM: a `logprobs` key, null unasked
                choice["logprobs"] = self._logprobs(tokens, k) if asks else None
            payload = {
                "id": "hosted-1",
                "object": "chat.completion",
                "created": 7,
                "model": body["model"],
                "choices": [choice],
                "usage": {
                    "prompt_tokens": 9,
                    "completion_tokens": len(tokens),
                    "total_tokens": 9 + len(tokens),
                },
            }
            self.sent.append(orjson.dumps(payload))
            return web.Response(body=self.sent[-1], content_type="application/json")

        app = web.Application()
        app.router.add_post("/v1/chat/completions", handle)
        return app

    def last_primary_answer(self) -> bytes:
        """What it sent to the last primary (a call without `max_tokens`)."""
        i = max(j for j, c in enumerate(self.calls) if "max_tokens" not in c)
        return self.sent[i]

    def replays(self) -> list[dict[str, Any]]:
        """The replay requests it received (a replay caps `max_tokens`; primaries here never do)."""
        return [c for c in self.calls if "max_tokens" in c]
