"""A recording pass-through between the proxy and a real upstream.

Every answer the upstream gives, primaries and shadow replays alike, is kept with the request that
asked for it, so a test can compare the very answers the proxy compared, directly and without the
proxy's code: the live estimate is then checked against what the stack really did, whatever that is
on this machine.

    with Recorder(vllm.base_url) as rec, ProxyThread(rec.base_url, shadow=...) as proxy:
        ...
        rec.answers()  # {prompt: [token sequence of each run], ...}
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from tests.integration.loop_thread import LoopServer

Token = tuple[str, tuple[int, ...] | None]  # (text, bytes): the token's identity on the wire


@dataclass(frozen=True)
class Exchange:
    request: dict[str, Any]
    status: int
    response: dict[str, Any] | None  # None: not a JSON body (a stream, an error page)


def chat_prompt(request: dict[str, Any]) -> str | None:
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    content = messages[-1].get("content")
    return content if isinstance(content, str) else None


def chat_answer(response: dict[str, Any]) -> tuple[Token, ...] | None:
    """The chosen tokens of a non-streamed chat completion, from its logprobs."""
    try:
        content = response["choices"][0]["logprobs"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    out = []
    for item in content:
        raw = item.get("bytes")
        out.append((str(item["token"]), tuple(raw) if isinstance(raw, list) else None))
    return tuple(out)


class Recorder(LoopServer):
    """127.0.0.1:<free port>/v1 → `upstream_base_url`, recording each JSON exchange."""

    def __init__(self, upstream_base_url: str) -> None:
        super().__init__("recorder")
        self.upstream = upstream_base_url.rstrip("/")
        self._exchanges: list[Exchange] = []
        self._lock = threading.Lock()
        self._session: aiohttp.ClientSession | None = None

    def exchanges(self) -> list[Exchange]:
        with self._lock:
            return list(self._exchanges)

    def answers(self) -> dict[str, list[tuple[Token, ...]]]:
        """Successful chat answers with logprobs, grouped by prompt, in arrival order."""
        out: dict[str, list[tuple[Token, ...]]] = defaultdict(list)
        for ex in self.exchanges():
            prompt = chat_prompt(ex.request)
            answer = chat_answer(ex.response) if ex.response is not None else None
            if ex.status == 200 and prompt is not None and answer is not None:
                out[prompt].append(answer)
        return dict(out)

    async def _handle(self, request: web.Request) -> web.Response:
        assert self._session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() in _PASSED}
        url = self.upstream + "/" + request.match_info["tail"]
        async with self._session.request(
            request.method, url, data=body or None, headers=headers, params=request.query
        ) as up:
            data = await up.read()
            ctype = up.headers.get("Content-Type", "application/octet-stream")
            status = up.status
        if body and "json" in ctype:
            with self._lock:
                self._exchanges.append(Exchange(orjson.loads(body), status, orjson.loads(data)))
        return web.Response(body=data, status=status, headers={"Content-Type": ctype})

    async def _runner(self) -> web.AppRunner:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600))
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/v1/{tail:.*}", self._handle)
        return web.AppRunner(app, access_log=None)

    async def _closed(self) -> None:
        if self._session is not None:
            await self._session.close()


_PASSED = frozenset({"content-type", "authorization", "accept"})
