"""A wrong upstream is noticed: the start-up warning, /readyz's policy with a dead upstream (real
sockets), the probe's cache and single flight, and 502 bodies that name the upstream."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time

import httpx
import orjson
from aiohttp import web

from proxy.config import build_config
from proxy.probe import UpstreamProbe, public_url
from proxy.upstreams import Upstreams, new_session
from reference.launch import free_port

TBG = [sys.executable, "-m", "proxy.cli"]


def test_public_url_drops_credentials() -> None:
    assert public_url("https://user:secret@api.example.com:8443/v1?key=x#f") == (
        "https://api.example.com:8443/v1"
    )


def _serve_until(port: int, proc: subprocess.Popen[str], status: int) -> httpx.Response:
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
            if r.status_code == status and r.json()["status"] != "probing upstreams":
                return r
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_dead_upstream_warns_makes_readyz_503_and_502_names_it() -> None:
    dead, port = free_port(), free_port()
    url = f"http://127.0.0.1:{dead}/v1"
    proc = subprocess.Popen(
        [*TBG, "serve", "--upstream", f"gone={url}", "--port", str(port)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        r = _serve_until(port, proc, 503)
        assert r.json()["status"] == "no upstream reachable"
        gone = r.json()["upstreams"]["gone"]
        assert gone["reachable"] is False and gone["url"] == url
        assert gone["detail"].startswith(f"upstream 'gone' at {url}: nothing listens (")
        chat = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            timeout=10,
        )
        assert chat.status_code == 502
        # The client learns the upstream's name; its address stays in the proxy's log.
        assert chat.json()["error"]["message"] == "Upstream 'gone' failed (connect)."
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    warnings = [orjson.loads(line) for line in err.splitlines() if "\"upstream 'gone'" in line]
    assert len(warnings) == 1, err  # one line at start, no repeat while nothing changes
    assert warnings[0]["level"] == "WARNING" and "nothing listens" in warnings[0]["msg"]


def test_base_url_without_v1_is_named_at_start_and_is_not_ready() -> None:
    """Every request through such an upstream would get the server's bare 404 ({"detail":"Not
    Found"} from vLLM): /readyz says 503 and why; with /v1 the same server is ready."""

    async def models(_r: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": []})

    async def readiness(base_url: str) -> tuple[str, httpx.Response]:
        port = free_port()
        proc = await asyncio.create_subprocess_exec(
            *TBG, "serve", "--upstream", base_url, "--port", str(port),
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            async with httpx.AsyncClient() as http:
                for _ in range(300):
                    try:
                        r = await http.get(f"http://127.0.0.1:{port}/readyz")
                        if r.json()["status"] not in {"starting", "probing upstreams"}:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.1)
        finally:
            proc.terminate()
            _, err = await proc.communicate()
        return err.decode(), r

    async def main() -> tuple[str, httpx.Response, httpx.Response, int]:
        app = web.Application()
        app.router.add_get("/v1/models", models)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        up = runner.addresses[0][1]
        try:
            err, wrong = await readiness(f"http://127.0.0.1:{up}")
            _, right = await readiness(f"http://127.0.0.1:{up}/v1")
        finally:
            await runner.cleanup()
        return err, wrong, right, up

    err, wrong, right, up = asyncio.run(main())
    detail = (
        f"upstream 'default' at http://127.0.0.1:{up}: GET /models answered 404: the base URL "
        f"probably lacks /v1 (try http://127.0.0.1:{up}/v1); not ready until it answers"
    )
    assert wrong.status_code == 503
    assert wrong.json() == {
        "status": "no usable upstream",
        "upstreams": {
            "default": {
                "url": f"http://127.0.0.1:{up}", "reachable": True, "usable": False,
                "detail": detail,
            }
        },
    }  # fmt: skip
    assert right.status_code == 200 and right.json() == {"status": "ready"}
    lines = [orjson.loads(x) for x in err.splitlines() if "GET /models answered 404" in x]
    assert len(lines) == 1 and lines[0]["msg"] == detail, err


def test_probe_is_cached_and_single_flight() -> None:
    """100 readiness checks on a stale cache start one probe round; a listener that appears later
    is seen after the cache expires."""

    async def main() -> None:
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            port = holder.getsockname()[1]  # bound, not listening: connection refused
            config = build_config(
                {"upstreams": [{"name": "a", "base_url": f"http://127.0.0.1:{port}/v1"}]}, {}
            )
            now = [0.0]
            session = new_session()
            probe = UpstreamProbe(
                Upstreams(config, session), max_age=10.0, clock=lambda: now[0], timeout=0.5
            )
            try:
                assert probe.ready()[0] is None  # nothing probed yet
                probe.start()
                await probe.wait()
                assert probe.ready()[0] is False and probe.probes == 1
                for _ in range(100):
                    probe.ready()  # fresh cache: no probe
                assert probe.probes == 1
                holder.listen()  # now something listens (accepts, never answers HTTP)
                now[0] = 11.0
                for _ in range(100):
                    probe.ready()
                await probe.wait()
                assert probe.probes == 2  # one round for the burst
                reachable, results = probe.ready()
                assert reachable is False and results["a"].status is None
                assert "no answer to GET /models within the probe timeout" in results["a"].detail
            finally:
                await probe.close()
                await session.close()

    asyncio.run(main())
