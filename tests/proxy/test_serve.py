"""`tbg serve` as a process (flags alone, JSON logs, SIGTERM) and graceful drain in-process."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import httpx
import orjson

from proxy.app import LIFECYCLE
from reference.launch import free_port

from .fakes import FakeUpstream, _serve_fake, proxy_stack
from .test_forwarding import MESSAGES, single


async def test_tbg_serve_with_only_an_upstream_flag() -> None:
    fake = FakeUpstream()
    fake_runner = await _serve_fake(fake)
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy.cli",
        "serve",
        "--upstream",
        fake.url,
        "--port",
        str(port),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "TBG_LOG_LEVEL": "INFO"},
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            for _ in range(200):
                try:
                    if (await http.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
            r = await http.post("/v1/chat/completions", json={"model": "m", "messages": MESSAGES})
            assert r.status_code == 200
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            _, err = await proc.communicate()
        assert proc.returncode == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await fake_runner.cleanup()
    lines = [orjson.loads(line) for line in err.decode().splitlines() if line.strip()]
    messages = [line["msg"] for line in lines]
    assert messages[0] == "listening" and messages[-1] == "stopped" and "draining" in messages
    access = [line for line in lines if line["logger"] == "tbg.access"]
    assert any(a["route"] == "chat" and a["status"] == 200 for a in access)
    assert b"secret prompt text" not in err and "Héllo" not in err.decode()


async def test_shutdown_drains_in_flight_requests() -> None:
    fake = FakeUpstream(gate=asyncio.Event(), piece_delay=0)
    async with proxy_stack(single(drain_seconds=5), [fake]) as stack, httpx.AsyncClient() as http:
        body = {"model": "m", "messages": MESSAGES, "stream": True}
        async with http.stream("POST", stack.proxy_url + "/v1/chat/completions", json=body) as resp:
            chunks = resp.aiter_bytes()
            first = await anext(chunks)
            assert first.startswith(b"data: ")
            cleanup = asyncio.create_task(stack.runner.cleanup(), name="test-cleanup")
            await asyncio.sleep(0.2)
            assert stack.app[LIFECYCLE].draining
            assert not cleanup.done()  # waiting for our request
            assert fake.gate is not None
            fake.gate.set()
            rest = b"".join([c async for c in chunks])
            assert rest.endswith(b"data: [DONE]\n\n")
        async with asyncio.timeout(5):
            await cleanup
