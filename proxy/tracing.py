"""OpenTelemetry spans of the shadow path, for teams that trace (optional: the `otel` extra).

With `shadow.tracing: true` every replayed trial is a span, `tbg.shadow.trial`, in the trace of
the primary request when its client sent a W3C `traceparent` (a child of the client's span, so
the replay shows up under the request it measured), else in a trace of its own. Under it: one
`tbg.shadow.replay` span per replay request and one `tbg.shadow.compare` span for the comparison
and the fold into the estimators. Attributes are counts, names and statuses only, never prompt or
completion text. Spans go to the global tracer provider: `tbg serve` sets one up with the OTLP/HTTP
exporter (`OTEL_EXPORTER_OTLP_ENDPOINT` and the other standard variables) unless the process
already has one (`opentelemetry-instrument tbg serve ...`, or an application embedding `make_app`).

The proxy imports nothing of OpenTelemetry while tracing is off; `NO_TRACING` stands in for it.
With the shadow worker process (`shadow.worker: process`) replays run in that process, which has
no tracer provider: no spans are emitted there.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from proxy.tap import RequestInfo

if TYPE_CHECKING:
    from estimator.model import Run
    from proxy.shadow.config import ShadowConfig
    from proxy.shadow.messages import Outcome
    from proxy.shadow.worker import ReplayTransport

log = logging.getLogger("tbg.shadow")

TRACER_NAME = "tbg.shadow"
MISSING = (
    "needs OpenTelemetry: pip install 'tbg-proxy[otel]' "
    "(opentelemetry-api, opentelemetry-sdk, opentelemetry-exporter-otlp-proto-http)"
)


def available() -> bool:
    """Whether the OpenTelemetry API can be imported (the config refuses `tracing: true` if not)."""
    try:
        import opentelemetry.trace  # noqa: F401
    except ImportError:
        return False
    return True


class Tracing(Protocol):
    """What the shadow worker asks of tracing (proxy/shadow/worker.py)."""

    def trial(self, request: RequestInfo) -> contextlib.AbstractContextManager[None]: ...
    def transport(self, transport: ReplayTransport) -> ReplayTransport: ...
    def compare(
        self, runs: tuple[Run, ...], load: int
    ) -> contextlib.AbstractContextManager[None]: ...
    def outcome(self, outcome: Outcome) -> None:
        """Record an outcome of the current trial on its span."""
        ...


class _NoTracing:
    def trial(self, request: RequestInfo) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def transport(self, transport: ReplayTransport) -> ReplayTransport:
        return transport

    def compare(self, runs: tuple[Run, ...], load: int) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def outcome(self, outcome: Outcome) -> None:
        pass


NO_TRACING: Tracing = _NoTracing()


def shadow_tracing(config: ShadowConfig) -> Tracing:
    """The tracing the shadow config asks for (`shadow.tracing`)."""
    if not config.tracing:
        return NO_TRACING
    return OtelTracing(config.replays)


def _request_attributes(request: RequestInfo) -> dict[str, Any]:
    return {
        "tbg.upstream": request.upstream,
        "tbg.model_name": request.model_name,
        "tbg.route": request.route,
        "tbg.stream": request.stream,
    }


class OtelTracing:
    """Spans through the global OpenTelemetry tracer provider (looked up per span, so a provider
    set after the app was built is used)."""

    def __init__(self, replays: int) -> None:
        from opentelemetry import propagate, trace

        self._trace = trace
        self._propagate = propagate
        self._replays = replays

    def _tracer(self) -> Any:
        return self._trace.get_tracer(TRACER_NAME)

    @contextlib.contextmanager
    def trial(self, request: RequestInfo) -> Iterator[None]:
        # The client's traceparent/tracestate, if any: the trial joins the primary's trace.
        parent = self._propagate.extract(_headers(request.headers))
        attributes = {**_request_attributes(request), "tbg.replays": self._replays}
        with self._tracer().start_as_current_span(
            "tbg.shadow.trial", context=parent, attributes=attributes
        ):
            yield

    def transport(self, transport: ReplayTransport) -> ReplayTransport:
        return _TracedTransport(transport, self._tracer, self._trace)

    @contextlib.contextmanager
    def compare(self, runs: tuple[Run, ...], load: int) -> Iterator[None]:
        """The comparison and its fold into the estimators."""
        attributes = {
            "tbg.runs": len(runs),
            "tbg.tokens": sum(len(r.tokens) for r in runs),
            "tbg.load": load,
            "tbg.logprobs": all(r.top_logprobs is not None for r in runs),
        }
        with self._tracer().start_as_current_span("tbg.shadow.compare", attributes=attributes):
            yield

    def outcome(self, outcome: Outcome) -> None:
        from proxy.shadow.messages import Compared, Dropped, Failed

        span = self._trace.get_current_span()  # the trial's (a no-op span outside one)
        if isinstance(outcome, Compared):
            span.set_attribute("tbg.outcome", "replayed")
        elif isinstance(outcome, Dropped):
            span.set_attribute("tbg.outcome", "dropped")
            span.set_attribute("tbg.drop_reason", outcome.reason)
        elif isinstance(outcome, Failed):
            span.set_attribute("tbg.outcome", "failed")
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, "every replay failed"))


def _headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Only the trace-context headers, lower-cased (the propagators look them up that way)."""
    out: dict[str, str] = {}
    for name in ("traceparent", "tracestate"):
        value = headers.get(name) or headers.get(name.title())
        if value:
            out[name] = value
    return out


class _TracedTransport:
    """A ReplayTransport whose requests are `tbg.shadow.replay` spans."""

    def __init__(self, inner: ReplayTransport, tracer: Callable[[], Any], trace: Any) -> None:
        self._inner = inner
        self._tracer = tracer
        self._trace = trace

    async def post_json(
        self,
        upstream: str,
        path: str,
        body: bytes,
        client_headers: Mapping[str, str],
        timeout_s: float,
        pod: str | None = None,
    ) -> tuple[int, bytes]:
        attributes = {"tbg.upstream": upstream, "http.request.method": "POST", "url.path": path}
        if pod is not None:
            attributes["tbg.pod"] = pod
        with self._tracer().start_as_current_span(
            "tbg.shadow.replay", kind=self._trace.SpanKind.CLIENT, attributes=attributes
        ) as span:
            status, payload = await self._inner.post_json(
                upstream, path, body, client_headers, timeout_s, pod
            )  # an exception is recorded on the span (and the span set to error) on the way out
            span.set_attribute("http.response.status_code", status)
            if status >= 400:
                span.set_status(self._trace.Status(self._trace.StatusCode.ERROR))
                span.set_attribute("error.type", str(status))
            return status, payload

    async def fetch_metrics(self, upstream: str, pod: str | None = None) -> str:
        return await self._inner.fetch_metrics(upstream, pod)


def configure_provider() -> Callable[[], None]:
    """For `tbg serve` with tracing on: install an SDK tracer provider exporting over OTLP/HTTP
    (configured by the standard OTEL_* variables) unless one is set already. Returns the shutdown
    that flushes the spans still buffered (a no-op when the provider was not ours)."""
    from opentelemetry import trace

    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return lambda: None  # the process was set up already (e.g. opentelemetry-instrument)
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("shadow.tracing is on but no tracer provider is set and the SDK or the OTLP "
                    "exporter is missing: spans are dropped (%s)", MISSING)  # fmt: skip
        return lambda: None
    named = "OTEL_SERVICE_NAME" in os.environ or "service.name" in os.environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    provider = TracerProvider(
        resource=Resource.create({} if named else {"service.name": "tbg-proxy"})
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider.shutdown
