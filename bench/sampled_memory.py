"""Peak memory of `tbg serve` relaying large sampled (shadow replay on, sample rate 1) non-streaming
responses.

    python bench/sampled_memory.py 100 3

Starts a local upstream whose chat completions are SIZE MB of JSON, then `tbg serve --sample-rate 1`
in front of it; sends one greedy request, then COUNT at once, reading each response to its end, and
prints the proxy process's resident memory (VmRSS) and peak (VmHWM) from /proc before, after the
single request and after the concurrent ones. Linux, loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

import httpx
from aiohttp import web

from reference.launch import free_port


def _mem(pid: int) -> str:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return f"rss {fields['VmRSS'].strip()}, peak {fields['VmHWM'].strip()}"


async def main(size_mb: int, count: int) -> None:
    text = b"x" * (size_mb * 1024 * 1024)
    body = b'{"choices":[{"index":0,"message":{"role":"assistant","content":"' + text + b'"}}]}'

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = len(body)
        await resp.prepare(request)
        for start in range(0, len(body), 1 << 20):
            await resp.write(body[start : start + (1 << 20)])
        await resp.write_eof()
        return resp

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "m"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    up = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "proxy.cli", "serve", "--upstream", up, "--model", "m"),
        *("--sample-rate", "1", "--replays", "1", "--port", str(port)),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    request = {"model": "m", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    try:
        async with httpx.AsyncClient(timeout=120) as http:
            for _ in range(300):
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
            print(f"before:            {_mem(proc.pid)}")

            async def one() -> int:
                n = 0
                async with http.stream("POST", url, json=request) as r:
                    async for chunk in r.aiter_raw():
                        n += len(chunk)
                return n

            assert await one() == len(body)
            print(f"after 1 x {size_mb} MB:    {_mem(proc.pid)}")
            sizes = await asyncio.gather(*(one() for _ in range(count)))
            assert sizes == [len(body)] * count
            await asyncio.sleep(1)
            print(f"after {count} at once: {_mem(proc.pid)}")
    finally:
        proc.terminate()
        await proc.wait()
        await runner.cleanup()


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    asyncio.run(main(args[0] if args else 100, args[1] if len(args) > 1 else 3))
