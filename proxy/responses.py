"""What the relay (proxy/forward.py) reads of an upstream response, whichever client fetched it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import aiohttp


class UpstreamResponse(Protocol):
    """What the relay reads of an upstream response: proxy/h1.py's Response, or aiohttp's through
    `AiohttpResponse`."""

    @property
    def status(self) -> int: ...
    @property
    def reason(self) -> str: ...
    @property
    def raw_headers(self) -> Sequence[tuple[bytes, bytes]]: ...
    @property
    def content_type(self) -> str: ...
    @property
    def content_length(self) -> int | None: ...
    @property
    def complete(self) -> bool: ...
    def read_buffered(self) -> bytes: ...
    async def readany(self) -> bytes: ...
    async def read(self) -> bytes: ...
    def close(self) -> None: ...
    def release(self) -> None: ...


class AiohttpResponse:
    """aiohttp's ClientResponse behind the lean client's interface (HEAD, odd methods, or the
    lean client switched off)."""

    __slots__ = ("_resp",)

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp

    @property
    def status(self) -> int:
        return self._resp.status

    @property
    def reason(self) -> str:
        return self._resp.reason or ""

    @property
    def raw_headers(self) -> Sequence[tuple[bytes, bytes]]:
        return self._resp.raw_headers

    @property
    def content_type(self) -> str:
        return self._resp.content_type

    @property
    def content_length(self) -> int | None:
        return self._resp.content_length

    @property
    def complete(self) -> bool:
        return False  # always relayed through the streaming path

    def read_buffered(self) -> bytes:
        return b""

    async def readany(self) -> bytes:
        return await self._resp.content.readany()

    async def read(self) -> bytes:
        return await self._resp.read()

    def close(self) -> None:
        self._resp.close()

    def release(self) -> None:
        self._resp.release()
