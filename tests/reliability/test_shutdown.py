"""Graceful shutdown of `tbg serve`: SIGTERM with 20 slow streams in flight."""

from __future__ import annotations

import asyncio
import signal
import sys
import time

import httpx
import openai

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
