"""Smoke checks against running containers (deploy/image/smoke, deploy/compose/smoke), from the host.

The proxy: /readyz, a chat completion and a streamed one through the openai SDK, the requests
counted on /metrics. Prometheus (optional): the proxy target is up, the project's rule groups are
loaded and healthy, a recording rule gives a positive request rate from what it scraped (after more
requests once the counter is in), the Alertmanager is discovered. Alertmanager (optional): ready. Prints one JSON object of findings; exits 1 on the first
failed check with its reason. Not a pytest test: it needs images built by root with podman.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml
from openai import OpenAI

RULES = Path(__file__).resolve().parent / "prometheus" / "rules"
# A recording rule fed directly by the proxy's request counter (deploy/prometheus/rules).
RECORDED = "upstream_model_name:tbg_chat_requests:rate30m"


class SmokeError(RuntimeError):
    pass


def wait_for(what: str, probe: Callable[[], Any], timeout: float, every: float = 1.0) -> Any:
    """Call `probe` until it returns a truthy value (exceptions count as not yet)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
            last = value
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            last = exc
        time.sleep(every)
    raise SmokeError(f"{what}: not within {timeout:.0f} s (last: {last!r})")


def check_proxy(url: str, model: str, timeout: float, max_tokens: int = 24) -> dict[str, Any]:
    started = time.monotonic()
    wait_for(
        "proxy /readyz", lambda: httpx.get(f"{url}/readyz", timeout=5).status_code == 200, timeout
    )
    ready_s = time.monotonic() - started
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=120, max_retries=0)
    models = [m.id for m in client.models.list().data]
    if model not in models:
        raise SmokeError(f"model {model!r} not listed through the proxy: {models}")
    messages: Any = [{"role": "user", "content": "Name three primary colours."}]
    t0 = time.monotonic()
    chat = client.chat.completions.create(
        model=model, messages=messages, temperature=0, max_tokens=max_tokens
    )
    chat_s = time.monotonic() - t0
    text = chat.choices[0].message.content or ""
    if not text or chat.usage is None or chat.usage.completion_tokens < 1:
        raise SmokeError(f"empty chat completion: {chat}")
    t0 = time.monotonic()
    chunks = list(
        client.chat.completions.create(
            model=model, messages=messages, temperature=0, max_tokens=max_tokens, stream=True
        )
    )
    stream_s = time.monotonic() - t0
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    if not streamed or not finish:
        raise SmokeError(f"empty or unfinished stream ({len(chunks)} chunks)")
    metrics = httpx.get(f"{url}/metrics", timeout=5).text
    counted = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("tbg_requests_total{") and 'route="chat"' in line
    )
    if counted < 2:
        raise SmokeError(f"/metrics counts {counted} chat requests, expected >= 2")
    return {
        "ready_s": round(ready_s, 1),
        "models": models,
        "chat": text,
        "chat_s": round(chat_s, 2),
        "stream_chunks": len(chunks),
        "stream": streamed,
        "stream_s": round(stream_s, 2),
        "finish_reason": finish[-1],
        "chat_requests_counted": counted,
    }


def _prom(url: str, path: str, **params: str) -> Any:
    body = httpx.get(f"{url}/api/v1/{path}", params=params, timeout=10).json()
    if body.get("status") != "success":
        raise SmokeError(f"prometheus {path}: {body}")
    return body["data"]


def more_chat(proxy: str, model: str, n: int) -> None:
    """Short chat requests, so the request counter rises between two scrapes."""
    client = OpenAI(base_url=f"{proxy}/v1", api_key="unused", timeout=120, max_retries=0)
    for i in range(n):
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": f"Say {i}."}], max_tokens=4
        )


def check_prometheus(
    url: str, job: str, timeout: float, traffic: Callable[[], None]
) -> dict[str, Any]:
    started = time.monotonic()

    def proxy_up() -> list[dict[str, Any]]:
        active = _prom(url, "targets")["activeTargets"]
        return [t for t in active if t["labels"]["job"] == job and t["health"] == "up"]

    targets = wait_for("prometheus: proxy target up", proxy_up, timeout)
    want = sorted(
        g["name"]
        for path in sorted(RULES.glob("*.yml"))
        for g in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
    )
    groups = _prom(url, "rules")["groups"]
    loaded = sorted(g["name"] for g in groups)
    if loaded != want:
        raise SmokeError(f"rule groups loaded {loaded}, expected {want}")
    rules = [r for g in groups for r in g["rules"]]

    # Once Prometheus holds the chat counter, more requests make the recorded rate positive: the rule
    # computes from what was scraped, not only from a series that exists (a series' first sample
    # counts no increase, so the traffic must come after it).
    wait_for(
        "proxy counter scraped",
        lambda: _prom(url, "query", query='tbg_requests_total{route="chat"}')["result"],
        timeout,
    )
    traffic()

    def recorded() -> list[Any]:
        result = _prom(url, "query", query=f"{RECORDED} > 0")["result"]
        return list(result)

    series = wait_for(f"recording rule {RECORDED}", recorded, timeout, every=2)
    bad = [
        r["name"] for g in _prom(url, "rules")["groups"] for r in g["rules"] if r["health"] == "err"
    ]
    if bad:
        raise SmokeError(f"rules evaluating with errors: {bad}")
    ams = wait_for(
        "prometheus: alertmanager discovered",
        lambda: _prom(url, "alertmanagers")["activeAlertmanagers"],
        timeout,
    )
    return {
        "seconds": round(time.monotonic() - started, 1),
        "proxy_targets_up": [t["scrapeUrl"] for t in targets],
        "rule_groups": loaded,
        "rules": len(rules),
        "alerting_rules": sum(r["type"] == "alerting" for r in rules),
        RECORDED: [(s["metric"], s["value"][1]) for s in series],
        "alertmanagers": [a["url"] for a in ams],
        "version": _prom(url, "status/buildinfo")["version"],
    }


def check_alertmanager(url: str, timeout: float) -> dict[str, Any]:
    wait_for(
        "alertmanager /-/ready", lambda: httpx.get(f"{url}/-/ready", timeout=5).is_success, timeout
    )
    status = httpx.get(f"{url}/api/v2/status", timeout=5).json()
    return {"cluster": status["cluster"]["status"], "version": status["versionInfo"]["version"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--proxy", required=True, help="proxy base URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--prometheus", help="Prometheus base URL (also checks its view of the stack)")
    p.add_argument("--job", default="tbg-proxy", help="the proxy's scrape job in Prometheus")
    p.add_argument("--alertmanager", help="Alertmanager base URL")
    p.add_argument("--timeout", type=float, default=180, help="seconds to wait for each part")
    p.add_argument(
        "--max-tokens", type=int, default=24, help="per completion (CPU upstreams are slow)"
    )
    args = p.parse_args(argv)
    found: dict[str, Any] = {}
    try:
        found["proxy"] = check_proxy(
            args.proxy.rstrip("/"), args.model, args.timeout, args.max_tokens
        )
        if args.alertmanager:
            found["alertmanager"] = check_alertmanager(args.alertmanager.rstrip("/"), args.timeout)
        if args.prometheus:
            proxy = args.proxy.rstrip("/")
            found["prometheus"] = check_prometheus(
                args.prometheus.rstrip("/"),
                args.job,
                args.timeout,
                lambda: more_chat(proxy, args.model, 3),
            )
    except SmokeError as exc:
        print(json.dumps(found, indent=2), file=sys.stderr)
        print(f"SMOKE FAILED: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(found, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
