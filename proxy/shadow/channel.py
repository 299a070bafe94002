"""Framing for the executor boundary with the worker process: length-prefixed pickles of the typed
messages (proxy.shadow.messages) over a stream socket, one frame per message.

Only a process and its own child read these frames. The `Init` message carries the proxy's frozen
config, which holds read-only mappings (MappingProxyType) that pickle refuses: this pickler alone
reduces them to dicts wrapped again on load, so nothing global is changed.
"""

from __future__ import annotations

import asyncio
import io
import logging
import pickle
import struct
from collections.abc import Callable
from types import MappingProxyType
from typing import Any, Generic, TypeVar, cast

log = logging.getLogger("tbg.shadow")

_HEADER = struct.Struct(">I")

In = TypeVar("In")


def read_only(d: dict[Any, Any]) -> MappingProxyType[Any, Any]:
    return MappingProxyType(d)


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is MappingProxyType:
            return read_only, (dict(obj),)
        return NotImplemented


def frame(message: object) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(message)
    data = buf.getvalue()
    return _HEADER.pack(len(data)) + data


class Channel(asyncio.Protocol, Generic[In]):
    """Messages both ways over a stream socket. `send` never blocks: frames are corked and written
    with one system call per loop iteration; every complete frame received is handed to `on_message`
    (an exception there is logged and reported to `on_error`, and the channel goes on)."""

    def __init__(self, on_message: Callable[[In], None], on_error: Callable[[], None]) -> None:
        self._on_message = on_message
        self._on_error = on_error
        self._in = bytearray()
        self._out: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        buf = self._in
        buf += data
        start = 0
        while len(buf) - start >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buf, start)
            end = start + _HEADER.size + size
            if len(buf) < end:
                break
            message = pickle.loads(buf[start + _HEADER.size : end])
            start = end
            try:
                self._on_message(message)
            except Exception:  # a bug handling one message must not take the channel down
                log.exception("shadow worker channel: handling %s failed", type(message).__name__)
                self._on_error()
        del buf[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, message: object) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(frame(message))

    def _flush(self) -> None:
        if self._out and self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"".join(self._out))
        self._out.clear()

    async def aclose(self) -> None:
        """Write what is corked, close, and wait until the socket is closed."""
        self._flush()
        if self._transport is not None:
            self._transport.close()
        await self.closed
