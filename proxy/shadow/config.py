"""The `shadow:` section of the proxy config: its schema (pydantic, part of the whole file's
schema in `proxy.config`) and the frozen dataclasses the shadow path reads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, StrictBool, ValidationError, field_validator

from proxy.shadow.history_config import HistoryConfig, HistorySchema
from proxy.validation import Int, Number, Section, Text, messages

__all__ = [
    "Eligibility",
    "ModelPolicy",
    "ShadowConfig",
    "ShadowConfigError",
    "ShadowSchema",
    "parse_shadow_config",
]


class ShadowConfigError(ValueError):
    """A bad `shadow:` section; the message names the field (`shadow.models.x.sample_rate: ...`)."""


LoadSource = Literal["inflight", "vllm_metrics"]
LogprobsSupport = Literal["auto", "yes", "no"]
WorkerMode = Literal["inline", "process"]


@dataclass(frozen=True, slots=True)
class ModelPolicy:
    """Sampling and budget for one model name (or the defaults)."""

    sample_rate: float = 0.1
    replays_per_minute: float = 60.0
    tokens_per_minute: float = 100_000.0
    ceiling: float = 0.05


@dataclass(frozen=True, slots=True)
class Eligibility:
    """Which primaries may be replayed: greedy requests with a single choice."""

    # OpenAI's default temperature is 1, so an absent temperature is not greedy unless configured.
    missing_temperature_is_greedy: bool = False
    allow_top_k_1: bool = True


@dataclass(frozen=True, slots=True)
class ShadowConfig:
    enabled: bool = False
    defaults: ModelPolicy = ModelPolicy()
    models: Mapping[str, ModelPolicy] = field(default_factory=lambda: MappingProxyType({}))
    replays: int = 2
    max_concurrent: int = 4
    queue_size: int = 256
    delay_seconds: float = 0.0
    delay_jitter_seconds: float = 0.0
    augment_logprobs: bool = True
    top_logprobs: int = 5
    half_life_trials: float = 200.0
    exemplars: int = 50
    record_text: bool = False
    load_source: LoadSource = "inflight"
    # Whether the upstreams return logprobs: "auto" detects it from the first replay.
    logprobs: LogprobsSupport = "auto"
    # upstream name -> env var holding a key used for that upstream's replays only (billing and
    # rate limits separate from the primaries); other upstreams follow their own auth setting.
    replay_key_env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    load_poll_seconds: float = 1.0
    replay_timeout_seconds: float = 120.0
    eligibility: Eligibility = Eligibility()
    # "process": replays and comparisons run in a child process (proxy/shadow/process.py), niced.
    worker: WorkerMode = "inline"
    worker_nice: int = 10
    history: HistoryConfig = field(default_factory=HistoryConfig)
    tracing: bool = False  # OpenTelemetry spans of the shadow path (proxy/tracing.py)

    def policy(self, model_name: str) -> ModelPolicy:
        return self.models.get(model_name, self.defaults)


# Policy fields may sit at the section's top level (the defaults) and under `models.<name>`
# (overrides; an absent field inherits the section's value).
_RATE = Field(ge=0.0, le=1.0, description="probability an eligible request is replayed")
_RPM = Field(ge=0.0, description="replay budget per model, replays per minute")
_TPM = Field(ge=0.0, description="replay token budget per model, tokens per minute")
_CEILING = Field(gt=0.0, description="T_bg ceiling exported as `tbg_temperature_ceiling`")


class PolicySchema(Section):
    """`shadow.models.<name>`: the four policy fields, each inheriting the section's value."""

    sample_rate: Annotated[Number | None, _RATE] = None
    replays_per_minute: Annotated[Number | None, _RPM] = None
    tokens_per_minute: Annotated[Number | None, _TPM] = None
    ceiling: Annotated[Number | None, _CEILING] = None

    def over(self, base: ModelPolicy) -> ModelPolicy:
        given = {k: v for k, v in self.model_dump().items() if v is not None}
        return replace(base, **given)


class EligibilitySchema(Section):
    """`shadow.eligibility`: which primaries count as greedy."""

    missing_temperature_is_greedy: StrictBool = Field(
        False, description="treat an absent `temperature` as 0 (OpenAI's default is 1)"
    )
    allow_top_k_1: StrictBool = Field(True, description="treat `top_k: 1` as greedy")


class ShadowSchema(Section):
    """The `shadow:` section as written in the file; `to_config()` gives the runtime value."""

    renamed: ClassVar[Mapping[str, str]] = {
        "half_life_comparisons": "half_life_trials (the estimator's memory now counts replayed "
        "requests, not compared pairs, so it no longer shrinks as `replays` grows)",
    }

    enabled: StrictBool | None = Field(
        None, description="replay on/off; default: on when the section is non-empty"
    )
    sample_rate: Annotated[Number, _RATE] = 0.1
    replays_per_minute: Annotated[Number, _RPM] = 60.0
    tokens_per_minute: Annotated[Number, _TPM] = 100_000.0
    ceiling: Annotated[Number, _CEILING] = 0.05
    models: dict[str, PolicySchema] = Field(
        default_factory=dict,
        description="per-model override of the four policy fields; `<name>` must be a "
        "configured model",
    )
    replays: Annotated[Int, Field(ge=1, le=16, description="k replays per sampled request")] = 2
    max_concurrent: Annotated[Int, Field(ge=1, le=256, description="replays in flight")] = 4
    queue_size: Annotated[
        Int,
        Field(ge=1, le=1_000_000, description="finished primaries waiting; full: `queue_full`"),
    ] = 256
    delay_seconds: Annotated[
        Number, Field(ge=0.0, le=3600.0, description="wait before replaying")
    ] = 0.0
    delay_jitter_seconds: Annotated[
        Number, Field(ge=0.0, le=3600.0, description="plus a uniform jitter up to this")
    ] = 0.0
    augment_logprobs: StrictBool = Field(
        True, description="ask for logprobs on sampled requests, strip them for the client"
    )
    top_logprobs: Annotated[
        Int, Field(ge=1, le=20, description="logprobs requested per position")
    ] = 5
    half_life_trials: Annotated[
        Number,
        Field(
            gt=0.0,
            description="online estimator memory: a replayed request (trial) weighs "
            "2^(-age/half_life), age counted in trials (was `half_life_comparisons`, in pairs)",
        ),
    ] = 200.0
    exemplars: Annotated[
        Int, Field(ge=0, le=10_000, description="divergence exemplars kept for `GET /tbg`")
    ] = 50
    record_text: StrictBool = Field(False, description="keep prompt/answer text in exemplars")
    load_source: LoadSource = Field("inflight", description="where load buckets come from")
    load_poll_seconds: Annotated[
        Number, Field(ge=0.05, le=3600.0, description="poll period for `vllm_metrics`")
    ] = 1.0
    logprobs: LogprobsSupport = Field(
        "auto", description="whether upstreams return logprobs (`auto`: from the first replay)"
    )
    replay_key_env: dict[str, Text] = Field(
        default_factory=dict,
        description="upstream name -> env var with a key for that upstream's replays only; "
        "the upstream must exist and the variable be set",
    )
    replay_timeout_seconds: Annotated[
        Number, Field(gt=0.0, description="per replay request, seconds")
    ] = 120.0
    worker: WorkerMode = Field(
        "inline",
        description="where replays and comparisons run: `inline` on the proxy's event loop (and "
        "a thread), `process` in a shadow worker process, so the primaries' loop only samples "
        "and hands off (+1 process per replica, +1–2 s at start); env `TBG_SHADOW_WORKER`",
    )
    worker_nice: Annotated[
        Int,
        Field(
            ge=0,
            le=19,
            description="niceness added to the worker process, so that a busy machine serves the "
            "primaries first; env `TBG_SHADOW_WORKER_NICE`",
        ),
    ] = 10
    eligibility: EligibilitySchema = Field(
        EligibilitySchema(), description="which primaries count as greedy"
    )
    history: HistorySchema = Field(
        HistorySchema(), description="the estimate's history behind `/tbg/history` and `/ui`"
    )
    tracing: StrictBool = Field(
        False,
        description="OpenTelemetry spans of each trial, its replays and its comparison, in the "
        "primary's trace when the client sent a `traceparent` (needs the `otel` extra; "
        "docs/shadow.md)",
    )

    @field_validator("tracing")
    @classmethod
    def _tracing_is_installed(cls, value: bool) -> bool:
        from proxy.tracing import MISSING, available

        if value and not available():
            raise ValueError(MISSING)
        return value

    def to_config(self, *, non_empty: bool) -> ShadowConfig:
        """The runtime value; `non_empty`: the section had keys (turns replay on by default)."""
        defaults = ModelPolicy(
            sample_rate=self.sample_rate,
            replays_per_minute=self.replays_per_minute,
            tokens_per_minute=self.tokens_per_minute,
            ceiling=self.ceiling,
        )
        return ShadowConfig(
            enabled=non_empty if self.enabled is None else self.enabled,
            defaults=defaults,
            models=MappingProxyType({n: p.over(defaults) for n, p in self.models.items()}),
            replays=self.replays,
            max_concurrent=self.max_concurrent,
            queue_size=self.queue_size,
            delay_seconds=self.delay_seconds,
            delay_jitter_seconds=self.delay_jitter_seconds,
            augment_logprobs=self.augment_logprobs,
            top_logprobs=self.top_logprobs,
            half_life_trials=self.half_life_trials,
            exemplars=self.exemplars,
            record_text=self.record_text,
            load_source=self.load_source,
            logprobs=self.logprobs,
            replay_key_env=MappingProxyType(dict(self.replay_key_env)),
            load_poll_seconds=self.load_poll_seconds,
            replay_timeout_seconds=self.replay_timeout_seconds,
            eligibility=Eligibility(
                missing_temperature_is_greedy=self.eligibility.missing_temperature_is_greedy,
                allow_top_k_1=self.eligibility.allow_top_k_1,
            ),
            worker=self.worker,
            worker_nice=self.worker_nice,
            history=self.history.to_config(),
            tracing=self.tracing,
        )


def parse_shadow_config(raw_in: Mapping[str, Any] | None, where: str = "shadow") -> ShadowConfig:
    """Validate the `shadow:` section on its own (the proxy validates it inside the whole file's
    schema, `proxy.config`); absent section = shadow replay disabled."""
    raw = {} if raw_in is None else raw_in
    try:
        schema = ShadowSchema.model_validate(raw)
    except ValidationError as exc:
        raise ShadowConfigError("\n".join(messages(exc, ShadowSchema, where))) from None
    return schema.to_config(non_empty=bool(raw))
