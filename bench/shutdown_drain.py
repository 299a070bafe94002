"""How long `tbg serve` takes to stop on SIGTERM with one stream that outlives `drain_seconds`.

    python bench/shutdown_drain.py 2 3 5

For each drain: start `tbg serve` in front of a local fake upstream whose stream pauses 30 s after
its first event, start that stream, send SIGTERM, and print when the stream was cut and when the
process exited (seconds after the signal). Loopback only; about drain + 2 s per value.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time

import httpx

from reference.launch import free_port
from tests.proxy.fakes import FakeUpstream, _serve_fake


async def measure(drain: float) -> tuple[float, float]:
    fake = FakeUpstream(piece_delay=30.0)
    fake_runner = await _serve_fake(fake)
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "proxy.cli", "serve", "--upstream", fake.url),
        *("--port", str(port), "--drain-seconds", str(drain)),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with httpx.AsyncClient(timeout=60) as http:
            for _ in range(300):
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
            body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            async with http.stream("POST", url, json=body) as r:
                chunks = r.aiter_raw()
                await anext(chunks)
                proc.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
                with contextlib.suppress(httpx.HTTPError):
                    async for _ in chunks:
                        pass
                cut = time.monotonic() - signalled
        await proc.wait()
        return cut, time.monotonic() - signalled
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await fake_runner.cleanup()


async def main(drains: list[float]) -> None:
    for drain in drains:
        cut, exited = await measure(drain)
        print(f"drain_seconds {drain:g}: stream cut after {cut:.2f} s, exited after {exited:.2f} s")


if __name__ == "__main__":
    asyncio.run(main([float(a) for a in sys.argv[1:]] or [2.0, 3.0, 5.0]))
