"""OpenTelemetry spans of the shadow path through the real proxy, recorded by the SDK's in-memory
exporter: in the client's trace when it sent a `traceparent`, no prompt text in any attribute; and
the proxy without OpenTelemetry installed."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI

from tests.shadow.conftest import FakeLLM, Stack

pytest.importorskip("opentelemetry.sdk")
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode

CHAT = {"model": "m", "messages": [{"role": "user", "content": "secret prompt 42"}],
        "temperature": 0}  # fmt: skip
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
ROOT = Path(__file__).resolve().parents[2]
# Spans come from replays on the proxy's own loop; the shadow worker process has no tracer provider.
INLINE = {"TBG_SHADOW_WORKER": "inline"}


@pytest.fixture(scope="session")
def exporter_session() -> InMemorySpanExporter:
    """The process's tracer provider, set once (OpenTelemetry allows one per process)."""
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture
def spans(exporter_session: InMemorySpanExporter) -> Iterator[InMemorySpanExporter]:
    exporter_session.clear()
    yield exporter_session
    exporter_session.clear()


def by_name(finished: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in finished if s.name == name]


def children(finished: tuple[ReadableSpan, ...], parent: ReadableSpan) -> list[ReadableSpan]:
    pid = parent.get_span_context().span_id
    return [s for s in finished if s.parent is not None and s.parent.span_id == pid]


async def run(stack: Stack, n: int = 1, headers: dict[str, str] | None = None) -> None:
    async with AsyncOpenAI(base_url=stack.proxy_url, api_key="k", max_retries=0) as oai:
        for _ in range(n):
            await oai.chat.completions.create(**CHAT, extra_headers=headers or {})
    assert await stack.tap.idle(20.0)


async def test_trial_joins_the_clients_trace(make_stack: Any, spans: InMemorySpanExporter) -> None:
    stack: Stack = await make_stack(
        FakeLLM(flip_replays={1}), {"tracing": True, "replays": 2}, env=INLINE
    )
    await run(stack, headers={"traceparent": TRACEPARENT})
    finished = spans.get_finished_spans()
    (trial,) = by_name(finished, "tbg.shadow.trial")
    ctx = trial.get_span_context()
    assert format(ctx.trace_id, "032x") == TRACE_ID  # the primary's trace
    assert trial.parent is not None and format(trial.parent.span_id, "016x") == PARENT_ID
    assert trial.parent.is_remote
    assert trial.attributes is not None
    assert dict(trial.attributes) == {
        "tbg.upstream": "fake", "tbg.model_name": "m", "tbg.route": "chat",
        "tbg.stream": False, "tbg.replays": 2, "tbg.outcome": "replayed",
    }  # fmt: skip
    kids = children(finished, trial)
    replays = [s for s in kids if s.name == "tbg.shadow.replay"]
    (compare,) = [s for s in kids if s.name == "tbg.shadow.compare"]
    assert len(replays) == 2 and len(kids) == 3
    for span in replays:
        assert span.kind == trace.SpanKind.CLIENT and span.attributes is not None
        assert span.attributes["http.response.status_code"] == 200
        assert span.attributes["url.path"] == "/chat/completions"
        assert span.status.status_code == StatusCode.UNSET
    assert compare.attributes is not None and compare.attributes["tbg.runs"] == 2
    assert all(s.start_time is not None and s.end_time is not None for s in kids)
    assert all(s.end_time <= trial.end_time for s in kids if s.end_time and trial.end_time)
    assert stack.tap.view().totals()["replayed"] == 1
    for span in finished:  # nothing of the prompt or the answer
        values = " ".join(str(v) for v in (span.attributes or {}).values())
        assert "secret" not in values and "Hello" not in values


async def test_without_traceparent_a_trial_is_a_trace_of_its_own(
    make_stack: Any, spans: InMemorySpanExporter
) -> None:
    stack: Stack = await make_stack(FakeLLM(), {"tracing": True}, env=INLINE)
    await run(stack, n=2)
    trials = by_name(spans.get_finished_spans(), "tbg.shadow.trial")
    assert len(trials) == 2 and all(t.parent is None for t in trials)
    assert len({t.get_span_context().trace_id for t in trials}) == 2


async def test_failures_and_drops_are_on_the_span(
    make_stack: Any, spans: InMemorySpanExporter
) -> None:
    failing: Stack = await make_stack(
        FakeLLM(fail_replays=lambda _i: True), {"tracing": True}, env=INLINE
    )
    await run(failing, headers={"traceparent": TRACEPARENT})
    finished = spans.get_finished_spans()
    (trial,) = by_name(finished, "tbg.shadow.trial")
    assert trial.attributes is not None and trial.attributes["tbg.outcome"] == "failed"
    assert trial.status.status_code == StatusCode.ERROR
    replays = by_name(finished, "tbg.shadow.replay")
    # one span per replay request: each of the 2 replays asked with logprobs, then once without
    # (while logprobs support is being detected a failure is retried plain)
    assert len(replays) == failing.fake.replays == 4
    assert all(s.status.status_code == StatusCode.ERROR for s in replays)
    assert all(s.attributes and s.attributes["http.response.status_code"] == 500 for s in replays)
    assert not by_name(finished, "tbg.shadow.compare")

    spans.clear()
    starved: Stack = await make_stack(
        FakeLLM(), {"tracing": True, "tokens_per_minute": 1.0}, env=INLINE
    )
    await run(starved)
    (trial,) = by_name(spans.get_finished_spans(), "tbg.shadow.trial")
    assert trial.attributes is not None
    assert (trial.attributes["tbg.outcome"], trial.attributes["tbg.drop_reason"]) == (
        "dropped", "budget")  # fmt: skip


async def test_tracing_off_records_nothing(make_stack: Any, spans: InMemorySpanExporter) -> None:
    stack: Stack = await make_stack(FakeLLM(), {})
    await run(stack, headers={"traceparent": TRACEPARENT})
    assert stack.tap.view().totals()["replayed"] == 1
    assert spans.get_finished_spans() == ()


WITHOUT_OTEL = r"""
import asyncio, sys
sys.modules["opentelemetry"] = None  # as if it were not installed: every import of it fails
from openai import AsyncOpenAI
from proxy.app import make_app, make_runner
from proxy.config import ConfigError, build_config
from proxy.shadow.wiring import SHADOW
from tests.shadow.conftest import FakeLLM, serve

async def main() -> None:
    base, upstream = await serve(FakeLLM().app())
    up = {"name": "fake", "base_url": f"{base}/v1", "models": ["m"]}
    try:
        build_config({"upstreams": [up], "shadow": {"tracing": True}}, {})
    except ConfigError as exc:
        print("refused:", exc)
    app = make_app(build_config({"upstreams": [up], "shadow": {"sample_rate": 1.0}}, {}))
    root, runner = await serve(app, make_runner(app))
    async with AsyncOpenAI(base_url=root + "/v1", api_key="k", max_retries=0) as oai:
        out = await oai.chat.completions.create(model="m", temperature=0,
                                                messages=[{"role": "user", "content": "hi"}])
    assert await app[SHADOW].idle(20.0)
    print("answer:", out.choices[0].message.content, app[SHADOW].view().totals())
    assert not any(m == "opentelemetry" or m.startswith("opentelemetry.") for m in sys.modules
                   if sys.modules[m] is not None)
    await runner.cleanup()
    await upstream.cleanup()

asyncio.run(main())
"""


def test_the_proxy_runs_without_opentelemetry() -> None:
    proc = subprocess.run([sys.executable, "-W", "error", "-c", WITHOUT_OTEL], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        "refused: shadow.tracing: " in proc.stdout
        and "pip install 'tbg-proxy[otel]'" in proc.stdout
    )
    assert "answer: Hello, world A! {'sampled': 1, 'replayed': 1" in proc.stdout


async def test_tbg_serve_exports_the_spans_over_otlp(tmp_path: Path) -> None:
    """The real `tbg serve` with its OTLP/HTTP exporter, against a collector on loopback that
    decodes what it receives."""
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    from aiohttp import web
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    from reference.launch import free_port
    from tests.shadow.conftest import serve

    received: list[ExportTraceServiceRequest] = []

    async def collect(request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        received.append(message)
        return web.Response(body=b"", content_type="application/x-protobuf")

    collector = web.Application()
    collector.router.add_post("/v1/traces", collect)
    otlp, collector_runner = await serve(collector)
    base, upstream_runner = await serve(FakeLLM().app())
    config = tmp_path / "tbg.yaml"
    config.write_text(
        f"upstreams: [{{name: fake, base_url: '{base}/v1', models: [m]}}]\n"
        "shadow: {sample_rate: 1.0, replays: 2, tracing: true}\n"
    )
    port = free_port()
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": otlp, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    env.pop("OTEL_SERVICE_NAME", None)
    env.update(INLINE)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy.cli", "serve", "--config", str(config), "--port", str(port),
        cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with AsyncOpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0
        ) as oai:
            async with httpx.AsyncClient() as http:
                for _ in range(200):  # until it listens
                    try:
                        await http.get(f"http://127.0.0.1:{port}/healthz")
                        break
                    except httpx.TransportError:
                        await asyncio.sleep(0.1)
            await oai.chat.completions.create(**CHAT, extra_headers={"traceparent": TRACEPARENT})
        names: dict[str, list[Any]] = {}
        for _ in range(100):  # the batch processor sends within OTEL_BSP_SCHEDULE_DELAY
            names = {}
            for message in received:
                for rs in message.resource_spans:
                    service = {a.key: a.value.string_value for a in rs.resource.attributes}
                    for ss in rs.scope_spans:
                        for span in ss.spans:
                            names.setdefault(span.name, []).append((service, span))
            if "tbg.shadow.trial" in names:
                break
            await asyncio.sleep(0.1)
    finally:
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        await upstream_runner.cleanup()
        await collector_runner.cleanup()
    assert "tbg.shadow.trial" in names, err.decode()[-2000:]
    ((service, trial),) = names["tbg.shadow.trial"]
    assert service["service.name"] == "tbg-proxy"
    assert trial.trace_id.hex() == TRACE_ID and trial.parent_span_id.hex() == PARENT_ID
    assert len(names["tbg.shadow.replay"]) == 2 and len(names["tbg.shadow.compare"]) == 1
    assert all(s.trace_id.hex() == TRACE_ID for group in names.values() for _, s in group)
