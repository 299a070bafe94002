"""Graceful shutdown of `tbg serve`: SIGTERM with 20 slow streams in flight; a stream longer than
the drain is cut at `drain_seconds` and the whole shutdown stays within it plus a stated margin."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time

import httpx
import openai
import pytest

from proxy.connections import SHUTDOWN_MARGIN_S
from reference.launch import free_port
from tests.proxy.fakes import FakeUpstream, _serve_fake

STREAMS = 20
DRAIN_SECONDS = 10.0


async def _wait_ready(port: int) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        for _ in range(300):
            try:
                if (await http.get("/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("tbg serve did not become ready")


async def test_sigterm_drains_twenty_slow_streams_and_refuses_new_connections() -> None:
    fake = FakeUpstream(piece_delay=0.3)  # 6 pieces: ~1.5 s per stream
    fake_runner = await _serve_fake(fake)
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "proxy.cli", "serve", "--upstream", fake.url),
        *("--port", str(port), "--drain-seconds", str(DRAIN_SECONDS)),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0)
    try:
        await _wait_ready(port)
        first = [asyncio.Event() for _ in range(STREAMS)]

        async def one(i: int) -> str:
            stream = await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}], stream=True
            )
            text = ""
            async for chunk in stream:
                first[i].set()
                if chunk.choices and chunk.choices[0].delta.content:
                    text += chunk.choices[0].delta.content
            return text

        streams = [asyncio.create_task(one(i)) for i in range(STREAMS)]
        async with asyncio.timeout(10):
            await asyncio.gather(*(e.wait() for e in first))
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        await asyncio.sleep(0.3)
        refused = False
        try:  # a new connection once draining has begun
            async with httpx.AsyncClient() as http:
                await http.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
        except httpx.ConnectError:
            refused = True
        texts = await asyncio.gather(*streams)
        async with asyncio.timeout(DRAIN_SECONDS + 5):
            _, err = await proc.communicate()
        elapsed = time.monotonic() - signalled
    finally:
        await client.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await fake_runner.cleanup()
    assert texts == ["Héllo ☃"] * STREAMS  # every stream completed, byte-for-byte content
    assert refused, "a new connection was accepted while draining"
    assert proc.returncode == 0, err.decode()[-2000:]
    assert elapsed < DRAIN_SECONDS


@pytest.mark.parametrize("drain", [1.0, 2.0])
async def test_shutdown_takes_drain_seconds_plus_the_stated_margin_not_twice_the_drain(
    drain: float,
) -> None:
    """A stream that outlives the drain is cut at `drain_seconds`, and the process is gone within
    `drain_seconds` + 3 x SHUTDOWN_MARGIN_S (+0.5 s for the interpreter's exit); aiohttp alone
    waited the timeout twice (2 x drain)."""
    fake = FakeUpstream(piece_delay=30.0)  # its stream outlives any drain here
    fake_runner = await _serve_fake(fake)
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "proxy.cli", "serve", "--upstream", fake.url),
        *("--port", str(port), "--drain-seconds", str(drain)),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await _wait_ready(port)
        async with httpx.AsyncClient(timeout=30) as http:
            body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            async with http.stream("POST", url, json=body) as r:
                chunks = r.aiter_raw()
                assert await anext(chunks)  # the stream is in flight
                proc.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
                with contextlib.suppress(httpx.HTTPError):
                    async for _ in chunks:
                        pass
                cut = time.monotonic() - signalled
        async with asyncio.timeout(2 * drain + 10):
            _, err = await proc.communicate()
        elapsed = time.monotonic() - signalled
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await fake_runner.cleanup()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert drain - 0.1 <= cut <= drain + SHUTDOWN_MARGIN_S, cut  # it drained, then was cut
    assert elapsed < drain + 3 * SHUTDOWN_MARGIN_S + 0.5, elapsed
