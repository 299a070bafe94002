"""End to end: reference upstream (thermostat mode, an ideal sampler at T=0.5) → the real proxy with
shadow replay (sample_rate 1, ceiling 0.01) → a real Prometheus (Debian package, 127.0.0.1, temp
storage, scrape and rule evaluation every 1s) loaded with the end-to-end copy of our rules
(`rules_gen.Params.for_test()`: windows, `for:` and minimum counts shortened, see docs/monitoring.md).

Under bounded load through the openai SDK, every dashboard query, template variable and rule
expression must return data through Prometheus' HTTP API, and TbgAboveCeiling must reach `firing`.
Alert expressions other than the ceiling's are healthy-run quiet by design, so for them the test
queries their *probe* (the quantity the alert thresholds, written exactly as in the rule):
- drift alerts compare with `offset 1d` / `offset 7d`, which needs a day/week of history: probe = the
  current 1h lower bound (left operand);
- starved/stale/failures/drops/errors/latency: probe = the ratio/age/percentile before its threshold.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from grafana import promql, queries
from tests.monitoring.common import rules_gen
from tests.monitoring.promserver import PROMETHEUS, Prometheus, run_prometheus

pytest.importorskip("proxy.shadow", reason="proxy/shadow (shadow replay) is not there yet")
pytest.importorskip("reference.launch", reason="reference/launch.py (ReferenceProcess) missing")
pytest.importorskip("openai", reason="openai SDK not installed (pip install -e '.[dev]')")

from aiohttp import web
from openai import AsyncOpenAI

from proxy.app import make_app, make_runner
from proxy.config import build_config
from proxy.shadow.wiring import SHADOW
from reference.launch import ReferenceProcess

pytestmark = [
    pytest.mark.prometheus,
    pytest.mark.reference,
    pytest.mark.slow,
    pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (scripts/setup --dev)"),
]

TEMPERATURE = 0.5  # thermostat: the upstream samples at this T even when asked for T=0
CEILING = 0.01  # far below TEMPERATURE: TbgAboveCeiling must fire
MAX_REQUESTS = 120  # bound on the load, whatever happens
DEADLINE_S = 240.0
RATE_INTERVAL = "1m"
PROMPTS = [
    "Write a short poem about the sea.",
    "Explain what a hash table is.",
    "List three uses of copper.",
    "Why is the sky blue?",
    "Describe a sunrise.",
    "Give me a recipe idea with rice.",
]

PROBES: dict[str, str] = {
    "TbgDriftAbove1dBaseline": "upstream_model_name:tbg_temperature_lower:mle1h",
    "TbgDriftAbove7dBaseline": "upstream_model_name:tbg_temperature_lower:mle1h",
    "TbgEstimatorStarved": "upstream_model_name:tbg_chat_requests:rate30m",
    "TbgEstimateStale": (
        "time() - max by (upstream, model_name) (tbg_estimate_last_update_timestamp_seconds)"
    ),
    "TbgShadowReplayFailures": "upstream_model_name:tbg_shadow_failed:ratio_rate5m",
    "TbgShadowReplayDrops": "sum by (upstream, model_name) (rate(tbg_shadow_sampled_total[1m]))",
    "TbgUpstreamErrors": "upstream:tbg_upstream_errors:ratio_rate5m",
    "TbgProxyAddedLatencyHigh": "route:tbg_proxy_added_seconds:p99_5m",
    # the reference sends a system_fingerprint: the change counter exists, at 0 changes
    "TbgBackendChangeMovedTbg": (
        "sum by (upstream, model_name) (increase(tbg_backend_fingerprint_changes_total[6h]))"
    ),
}
# TbgShadowReplayDrops' own ratio has no series while nothing is dropped (the drop counter carries a
# `reason` label, so it cannot be padded with zeros); its probe is the denominator, written as in the
# rule. The drop ratio itself is covered by the promtool unit tests.
QUIET_IN_A_HEALTHY_RUN = {"TbgEstimatorStarved", "TbgShadowReplayFailures", "TbgUpstreamErrors"}


@pytest.fixture(scope="module")
def thermostat() -> Iterator[ReferenceProcess]:
    with ReferenceProcess(mode="thermostat", temperature=TEMPERATURE) as ref:
        yield ref


async def start_proxy(base_url: str) -> tuple[web.Application, web.AppRunner, int]:
    config = build_config(
        {
            # the same reference also serves as a canary (another upstream name): the canary
            # panels need a canary's series
            "upstreams": [{"name": "reference", "base_url": base_url, "models": ["smollm2"]},
                          {"name": "canary", "base_url": base_url}],
            "shadow": {"enabled": True, "sample_rate": 1.0, "replays": 2, "max_concurrent": 2,
                       "replays_per_minute": 1e6, "tokens_per_minute": 1e9, "ceiling": CEILING,
                       "canary": {"smollm2": {"upstream": "canary", "share": 0.25}}},
        },
        {},
    )  # fmt: skip
    app = make_app(config)
    runner = make_runner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return app, runner, int(runner.addresses[0][1])


async def load(oai: AsyncOpenAI, stop: asyncio.Event, sent: list[int], worker: int) -> None:
    i = worker
    while not stop.is_set() and sum(sent) < MAX_REQUESTS:
        prompt = PROMPTS[i % len(PROMPTS)]
        kind = i % 6
        sent[worker] += 1
        # JSON answers (the decision panel needs a json trial's series) at positions 3 and 5 of
        # 6: never all of them in the canary's fixed stride (every 4th sampled trial)
        if kind in (3, 5):
            await oai.chat.completions.create(
                model="smollm2", messages=[{"role": "user", "content": prompt}],
                temperature=0, max_tokens=12, response_format={"type": "json_object"})  # fmt: skip
        elif kind == 0:
            await oai.chat.completions.create(
                model="smollm2", messages=[{"role": "user", "content": prompt}],
                temperature=0, max_tokens=12)  # fmt: skip
        elif kind in (1, 4):
            stream = await oai.chat.completions.create(
                model="smollm2", messages=[{"role": "user", "content": prompt}],
                temperature=0, max_tokens=12, stream=True)  # fmt: skip
            async for _ in stream:
                pass
        elif kind == 2:
            await oai.completions.create(model="smollm2", prompt=prompt, temperature=0,
                                         max_tokens=12)  # fmt: skip
        i += 2


async def nonempty(client: httpx.AsyncClient, prom: Prometheus, expr: str) -> bool:
    body = await prom.query(client, expr)
    assert body["status"] == "success", (expr, body)
    return bool(body["data"]["result"])


async def test_every_query_returns_data_and_the_ceiling_alert_fires(
    thermostat: ReferenceProcess, tmp_path: Path
) -> None:
    gen = rules_gen()
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    for name, text in gen.outputs(gen.Params.for_test()).items():
        (rules_dir / name).write_text(text, encoding="utf-8")
    rule_exprs = queries.rule_expressions(rules_dir)
    alerts = {e.where: e.expr for e in rule_exprs if e.source == "alert"}
    assert set(PROBES) | {"TbgAboveCeiling"} == set(alerts)
    checks: dict[str, str] = {}
    for e in queries.dashboard_expressions():
        checks[f"panel {e.where}"] = promql.substitute(e.expr, {"__rate_interval": RATE_INTERVAL})
    for e in rule_exprs:
        if e.source == "record" or e.where == "TbgAboveCeiling":
            checks[f"{e.source} {e.where}"] = e.expr
        else:
            probe = PROBES[e.where]
            # the probe is the rule's own quantity: its first metric is read by the rule too
            first = sorted(promql.metric_names(probe))[0]
            assert first in e.expr or first in " ".join(alerts.values()), (e.where, probe)
            checks[f"probe {e.where}"] = probe
    variables = queries.variable_queries()

    app, runner, port = await start_proxy(thermostat.base_url)
    oai = AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0,
                      timeout=300)  # fmt: skip
    stop = asyncio.Event()
    sent = [0, 0]
    workers: list[asyncio.Task[None]] = []
    try:
        with run_prometheus(
            tmp_path, [f"127.0.0.1:{port}"], sorted(rules_dir.glob("*.yml"))
        ) as prom:
            workers = [asyncio.create_task(load(oai, stop, sent, w), name=f"load-{w}")
                       for w in range(2)]  # fmt: skip
            pending = dict(checks)
            firing_at: float | None = None
            started = time.monotonic()
            async with httpx.AsyncClient() as client:
                while time.monotonic() - started < DEADLINE_S:
                    await asyncio.sleep(2.0)
                    for label, expr in list(pending.items()):
                        if await nonempty(client, prom, expr):
                            del pending[label]
                    if firing_at is None and await nonempty(
                        client, prom, 'ALERTS{alertname="TbgAboveCeiling", alertstate="firing"}'
                    ):
                        firing_at = time.monotonic() - started
                    if firing_at is not None and not pending:
                        break
                    for w in workers:
                        if w.done() and w.exception() is not None:
                            raise w.exception()  # type: ignore[misc]
                # template variables: label_values(metric{...}, label)
                missing_vars = []
                for v in variables:
                    inner = v.expr.removeprefix("label_values(").removesuffix(")")
                    selector, label = (s.strip() for s in inner.rsplit(",", 1))
                    r = await client.get(f"{prom.url}/api/v1/label/{label}/values",
                                         params={"match[]": promql.substitute(selector)})  # fmt: skip
                    if not r.json()["data"]:
                        missing_vars.append(v.where)
                # alerts that must stay quiet in a healthy run
                loud = [a for a in sorted(QUIET_IN_A_HEALTHY_RUN)
                        if await nonempty(client, prom, f'ALERTS{{alertname="{a}"}}')]  # fmt: skip
                diagnostics = {
                    q: [
                        (r["metric"], r["value"][1])
                        for r in (await prom.query(client, q))["data"]["result"]
                    ]
                    for q in (
                        "upstream_model_name:tbg_temperature_lower:mle1h",
                        "upstream_model_name:tbg_temperature_lower:mle10m",
                        "upstream_model_name:tbg_temperature:mle1h",
                        "upstream_model_name:tbg_temperature_upper:mle1h",
                        "upstream_model_name:tbg_pairs_compared:increase1h",
                        "tbg_temperature",
                        "tbg_temperature_lower",
                        "tbg_temperature_ceiling",
                    )
                }
                ceiling_alert = (await prom.query(client, 'ALERTS{alertname="TbgAboveCeiling"}'))[
                    "data"]["result"]  # fmt: skip
    finally:
        stop.set()
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await oai.close()
        await app[SHADOW].idle(30.0)
        await runner.cleanup()

    print(f"requests sent: {sum(sent)}; ceiling alert firing after {firing_at} s; "
          f"checked {len(checks)} expressions + {len(variables)} variables")  # fmt: skip
    assert not pending, (
        "no data for:\n" + "\n".join(f"{k}: {v}" for k, v in pending.items()) + f"\n{diagnostics}"
    )
    assert not missing_vars, missing_vars
    assert firing_at is not None, f"TbgAboveCeiling never fired: {ceiling_alert} {diagnostics}"
    assert {a["metric"]["model_name"] for a in ceiling_alert} == {"smollm2"}
    assert all(a["metric"]["severity"] == "critical" for a in ceiling_alert)
    assert not loud, f"alerts firing in a healthy run: {loud}"
