"""`tbg status` against a real running proxy (real sockets; the upstream is bench's ground-truth
chat server at a known temperature), the text rendering of /tbg, and the user errors of `tbg
status`: one line, exit 2."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import orjson

from proxy.status import pairs_needed, verdict
from reference.launch import free_port

TBG = [sys.executable, "-m", "proxy.cli"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TBG, *args], capture_output=True, text=True, timeout=60, check=False)


def wait_http(url: str, ok: int = 200, seconds: float = 30) -> httpx.Response:
    deadline = time.monotonic() + seconds
    while True:
        try:
            r = httpx.get(url, timeout=2)
            if r.status_code == ok:
                return r
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, url
        time.sleep(0.1)


@contextmanager
def process(cmd: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_status_of_a_running_proxy(tmp_path: Path) -> None:
    up_port, port = free_port(), free_port()
    # The default replay budget (60 a minute) would drop most of 12 fast requests as rate_limit.
    budget = tmp_path / "budget.yaml"
    budget.write_text("shadow: {replays_per_minute: 100000}\n", encoding="utf-8")
    truth = [sys.executable, "-m", "bench.truth_upstream", "--temperature", "0.3"]
    with process([*truth, "--port", str(up_port)]):
        wait_http(f"http://127.0.0.1:{up_port}/v1/models")
        serve = [*TBG, "serve", "--upstream", f"up=http://127.0.0.1:{up_port}/v1"]
        serve += ["--model", "truth", "--sample-rate", "1", "--replays", "2"]
        serve += ["--config", str(budget)]
        with process([*serve, "--port", str(port)]):
            base = f"http://127.0.0.1:{port}"
            wait_http(f"{base}/readyz")
            client = openai.OpenAI(base_url=f"{base}/v1", api_key="k", max_retries=0)
            for i in range(12):
                client.chat.completions.create(
                    model="truth",
                    messages=[{"role": "user", "content": f"q{i}"}],
                    temperature=0,
                    max_tokens=24,
                )
            deadline = time.monotonic() + 30
            while True:  # replays run off the hot path; the view is published about once a second
                report = orjson.loads(httpx.get(f"{base}/tbg").content)
                if report["estimates"] and report["estimates"][0]["pairs"] >= 12:
                    break
                assert time.monotonic() < deadline, report
                time.sleep(0.3)
            human = run("status", f"{base}/v1")
            as_json = run("status", base, "--json")
            text = httpx.get(f"{base}/tbg?format=text")
            accept = httpx.get(f"{base}/tbg", headers={"Accept": "text/plain"})
    assert human.returncode == 0, human.stderr
    e = orjson.loads(as_json.stdout)["estimates"][0]
    assert as_json.returncode == 0 and e["upstream"] == "up" and e["model_name"] == "truth"
    out = human.stdout
    # first whom the number describes (all 12 requests were temperature 0), then the estimates
    assert out.startswith("this number (T_bg) describes 100 % of your traffic (12 of 12 requests)")
    assert "\n\nup / truth\n" in out
    assert (
        f"T_bg      {e['estimate']:.3g}   95% interval [{e['lower']:.3g}, {e['upper']:.3g}]" in out
    )
    assert "ceiling   0.05" in out and e["ceiling"] == 0.05
    said, todo = verdict(e, 0.05, "wait, or raise shadow.sample_rate")
    assert f"  verdict   {said}\n  next      {todo}" in out
    # the truth upstream samples at T = 0.3, far above the ceiling: with 12+ pairs it is decided
    assert said.startswith("ABOVE the ceiling 0.05"), out
    assert "T_bg is the `estimate`" in out and "p_identical is the share of compared" in out
    # how old the estimate is and how many requests could have fed it
    assert e["eligible"] == 12 and 0 <= e["age_seconds"] < 60
    age = re.search(r"^  age       last changed (\d+) s ago; 12 eligible \(temperature-0\) "
                    rf"requests seen, {e['pairs']} pairs compared$", out, re.M)  # fmt: skip
    assert age, out
    assert f"{e['tokens_at_risk']} tokens compared" in out and "at risk" not in out
    assert (
        "  jitter    temperature " in out and "(share of compared positions whose logprobs" in out
    )
    for r in (text, accept):
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
        assert "up / truth" in r.text and "verdict" in r.text
        assert "p_identical is the share of compared" in r.text  # the served text explains it too


def test_verdicts() -> None:
    base = {"pairs": 40, "diverged": 3, "method": "likelihood"}
    assert verdict({**base, "pairs": 0}, 0.05, "m")[0] == "not enough data: 0 replay pairs yet"
    low = {**base, "estimate": 0.01, "lower": 0.0, "upper": 0.02}
    assert verdict(low, 0.05, "m")[0].startswith("below the ceiling 0.05")
    high = {**base, "estimate": 0.1, "lower": 0.07, "upper": 0.2}
    assert verdict(high, 0.05, "m")[0].startswith("ABOVE the ceiling 0.05")
    mid = {**base, "estimate": 0.04, "lower": 0.01, "upper": 0.06}
    need = pairs_needed(40, 0.04, 0.01, 0.06, 0.05)
    assert need == 160  # half-width 0.02 vs distance 0.01: four times narrower, 16x the pairs
    assert verdict(mid, 0.05, "m") == (
        "undecided against the ceiling 0.05 (the interval contains it): not enough data, "
        "40 pairs, need ~160 if the estimate holds",
        "m",
    )
    nolp = {**base, "estimate": None, "lower": None, "upper": None, "method": "hazard-only"}
    assert verdict(nolp, 0.05, "m")[0].startswith("no T_bg yet: 40 pairs, none carried logprobs")


def test_status_errors_are_one_line_exit_2() -> None:
    dead = free_port()
    out = run("status", f"127.0.0.1:{dead}")
    assert out.returncode == 2 and out.stdout == ""
    line = out.stderr.strip()
    assert "\n" not in line
    assert line.startswith(f"tbg status: cannot connect to http://127.0.0.1:{dead} (")
    assert line.endswith("): is a proxy running there (`tbg serve`)?")

    up_port, port = free_port(), free_port()
    truth = [sys.executable, "-m", "bench.truth_upstream", "--temperature", "0.1"]
    with process([*truth, "--port", str(up_port)]):
        wait_http(f"http://127.0.0.1:{up_port}/v1/models")
        not_proxy = run("status", f"http://127.0.0.1:{up_port}")
        with process([*TBG, "serve", "--upstream", f"http://127.0.0.1:{up_port}/v1",
                      "--port", str(port)]):  # fmt: skip
            wait_http(f"http://127.0.0.1:{port}/readyz")
            off = run("status", f"http://127.0.0.1:{port}")
            off_text = httpx.get(f"http://127.0.0.1:{port}/tbg?format=text")
    assert not_proxy.returncode == 2 and not_proxy.stderr == (
        f"tbg status: http://127.0.0.1:{up_port}/tbg answered 404: not a tbg proxy, or one "
        "without shadow replay (start it with --model NAME --sample-rate 0.1)\n"
    )
    assert off.returncode == 2 and off.stderr == (
        f"tbg status: http://127.0.0.1:{port} has shadow replay off, so nothing is measured: "
        "start it with --model NAME --sample-rate 0.1, or a shadow: section "
        "(docs/configuration.md)\n"
    )
    assert off_text.headers["Content-Type"].startswith("text/plain")
    assert off_text.text.startswith("Shadow replay is off, so nothing is measured.")
    assert run("status", "--timeout", "0").stderr == "tbg status: --timeout must be > 0\n"
