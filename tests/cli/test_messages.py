"""The CLI as a new user meets it: one line naming what to fix and exit 2, never a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx
import orjson

from reference.launch import free_port

TBG = [sys.executable, "-m", "proxy.cli"]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TBG, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_port_in_use_is_one_line_and_exit_2() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = run("serve", "--upstream", "http://127.0.0.1:9/v1", "--port", str(port))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        f"tbg serve: 127.0.0.1:{port} is already in use: stop what listens there or choose "
        "another --port"
    )
    assert "Traceback" not in out.stderr and '"msg":"stopped"' not in out.stderr


def test_version_and_did_you_mean() -> None:
    out = run("--version")
    assert out.returncode == 0 and out.stdout.startswith("tbg ")
    out = run("serv")
    assert out.returncode == 2
    assert out.stderr.startswith("tbg: unknown command 'serv' (did you mean 'serve'?)")


def test_bad_shadow_section_is_a_config_error(tmp_path: object) -> None:
    path = f"{tmp_path}/bad.yaml"
    with open(path, "w", encoding="utf-8") as f:
        f.write('upstreams: [{name: a, base_url: "http://127.0.0.1:9/v1", models: [m]}]\n')
        f.write("shadow: {sample_rate: 2}\n")
    out = run("serve", "--config", path)
    assert out.returncode == 2
    assert (
        out.stderr.strip() == "tbg serve: config error: shadow.sample_rate: must be <= 1.0, got 2"
    )


def test_quick_start_says_what_it_measures_and_tbg_explains_itself() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [*TBG, "serve", "--upstream", "http://127.0.0.1:9/v1", "--port", str(port)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        while True:  # JSON log records on a pipe; the same sentence is printed on a terminal
            record = orjson.loads(proc.stderr.readline())
            if record.get("msg") == "listening":
                break
        line = record["measuring"]
        assert line.startswith(f"tbg serve: proxy at http://127.0.0.1:{port}/v1 -> ")
        assert "shadow replay off: nothing is measured" in line
        assert line.endswith(f"; live page http://127.0.0.1:{port}/ui")
        deadline = time.monotonic() + 20
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/tbg", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert r.status_code == 200
        body = orjson.loads(r.content)
        assert body["shadow"] == "off" and "shadow:" in body["message"]
        page = httpx.get(f"http://127.0.0.1:{port}/ui", timeout=2)
        assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        if proc.stderr is not None:
            proc.stderr.close()


def test_port_0_prints_the_bound_port_and_a_named_model_is_measured() -> None:
    """`--port 0` lets the system choose; every URL shown carries the port it chose. A quick
    start that names a model measures it (shadow replay on, with the defaults)."""
    proc = subprocess.Popen(
        [*TBG, "serve", "--upstream", "http://127.0.0.1:9/v1", "--model", "m", "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        while True:
            record = orjson.loads(proc.stderr.readline())
            if record.get("msg") == "listening":
                break
        port = record["port"]
        assert isinstance(port, int) and port > 0
        assert record["measuring"] == (
            f"tbg serve: proxy at http://127.0.0.1:{port}/v1 -> default (http://127.0.0.1:9/v1); "
            "shadow replay on: m; sample rate 0.1, 2 replays, ceiling 0.05; live T_bg at "
            f"http://127.0.0.1:{port}/tbg; live page http://127.0.0.1:{port}/ui"
        )
        r = httpx.get(f"http://127.0.0.1:{port}/tbg", timeout=10)
        assert r.status_code == 200 and orjson.loads(r.content).get("shadow") != "off"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        if proc.stderr is not None:
            proc.stderr.close()
