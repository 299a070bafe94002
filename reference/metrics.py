"""vLLM-style Prometheus metrics (own registry), so the proxy reads load the same way on both."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class VllmMetrics:
    """`vllm:*` series with the `model_name` label, in a registry owned by one app."""

    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["model_name"]
        self._running = Gauge(
            "vllm:num_requests_running",
            "Requests being decoded now.",
            labels,
            registry=self.registry,
        )
        self._waiting = Gauge(
            "vllm:num_requests_waiting",
            "Requests waiting for the next batch.",
            labels,
            registry=self.registry,
        )
        self._prompt = Counter(
            "vllm:prompt_tokens",
            "Prefill tokens processed.",
            labels,
            registry=self.registry,
        )
        self._generation = Counter(
            "vllm:generation_tokens",
            "Generation tokens produced.",
            labels,
            registry=self.registry,
        )
        self._success = Counter(
            "vllm:request_success",
            "Finished requests by finish reason.",
            [*labels, "finished_reason"],
            registry=self.registry,
        )
        self.running = self._running.labels(model_name)
        self.waiting = self._waiting.labels(model_name)
        self.prompt_tokens = self._prompt.labels(model_name)
        self.generation_tokens = self._generation.labels(model_name)
        self._model_name = model_name
        for reason in ("stop", "length", "abort"):
            self._success.labels(model_name, reason)

    def finished(self, reason: str) -> None:
        self._success.labels(self._model_name, reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
