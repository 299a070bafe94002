"""The `shadow:` section of the proxy config. Its pydantic models are the runtime values the shadow
path reads (frozen, unknown keys refused): each field, its default and its bounds are declared once,
here, and validated with the whole file by `proxy.config`."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    StrictBool,
    ValidationError,
    ValidationInfo,
    WrapSerializer,
    field_validator,
    model_validator,
)

from proxy.shadow.canary_config import CanaryPolicy
from proxy.shadow.history_config import HistoryConfig
from proxy.sources import Env, Flag
from proxy.validation import Int, Number, Section, Text, messages

__all__ = [
    "Eligibility",
    "HistoryConfig",
    "ModelPolicy",
    "ShadowConfig",
    "ShadowConfigError",
    "parse_shadow_config",
    "turned_on",
]


class ShadowConfigError(ValueError):
    """A bad `shadow:` section; the message names the field (`shadow.models.x.sample_rate: ...`)."""


LoadSource = Literal["inflight", "vllm_metrics"]
LogprobsSupport = Literal["auto", "yes", "no"]
WorkerMode = Literal["inline", "process"]


def _read_only(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(value))


def _as_dict(value: Mapping[str, Any], handler: SerializerFunctionWrapHandler) -> Any:
    return handler(dict(value))


class ModelPolicy(Section):
    """Sampling and budget for one model (`shadow.models.<name>`), or the section's defaults (the
    same fields at the top of `shadow:`, which a model's entry inherits for what it leaves out)."""

    sample_rate: Annotated[
        Number,
        Field(ge=0.0, le=1.0, description="probability an eligible request is replayed"),
        Flag("--sample-rate", "R"),
    ] = 0.1
    replays_per_minute: Annotated[
        Number, Field(ge=0.0, description="replay budget per model, replays per minute")
    ] = 60.0
    tokens_per_minute: Annotated[
        Number, Field(ge=0.0, description="replay token budget per model, tokens per minute")
    ] = 100_000.0
    ceiling: Annotated[
        Number,
        Field(gt=0.0, description="T_bg ceiling exported as `tbg_temperature_ceiling`"),
        Flag("--ceiling", "T"),
    ] = 0.05


class Eligibility(Section):
    """`shadow.eligibility`: which primaries may be replayed (greedy, a single choice)."""

    # OpenAI's default temperature is 1, so an absent temperature is not greedy unless configured.
    missing_temperature_is_greedy: StrictBool = Field(
        False, description="treat an absent `temperature` as 0 (OpenAI's default is 1)"
    )
    allow_top_k_1: StrictBool = Field(True, description="treat `top_k: 1` as greedy")
    seeded: StrictBool = Field(
        True,
        description="replay requests sampled at temperature > 0 with an integer `seed` too, "
        "reported apart as seeded reproducibility (never in T_bg)",
    )


class ShadowConfig(ModelPolicy):
    """The `shadow:` section: the default policy (inherited fields), then replay's own settings."""

    renamed: ClassVar[Mapping[str, str]] = {
        "half_life_comparisons": "half_life_trials (the estimator's memory now counts replayed "
        "requests, not compared pairs, so it no longer shrinks as `replays` grows)",
    }

    enabled: StrictBool = Field(
        False, description="replay on/off; default: on when the section is non-empty"
    )
    models: Annotated[
        Mapping[str, ModelPolicy], AfterValidator(_read_only), WrapSerializer(_as_dict)
    ] = Field(
        default_factory=lambda: MappingProxyType({}),
        description="per-model override of the four policy fields; `<name>` must be a "
        "configured model",
    )
    replays: Annotated[
        Int, Field(ge=1, le=16, description="k replays per sampled request"), Flag("--replays", "N")
    ] = 2
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
    # Billing and rate limits of replays separate from the primaries'; other upstreams follow
    # their own auth setting. The keys themselves are `Config.replay_keys`.
    replay_key_env: Annotated[
        Mapping[str, Text], AfterValidator(_read_only), WrapSerializer(_as_dict)
    ] = Field(
        default_factory=lambda: MappingProxyType({}),
        description="upstream name -> env var with a key for that upstream's replays only; "
        "the upstream must exist and the variable be set",
    )
    replay_timeout_seconds: Annotated[
        Number, Field(gt=0.0, description="per replay request, seconds")
    ] = 120.0
    worker: Annotated[
        WorkerMode,
        Field(
            description="where replays and comparisons run: `inline` on the proxy's event loop "
            "(and a thread), `process` in a shadow worker process (proxy/shadow/worker.py), so "
            "the primaries' loop only samples and hands off (+1 process per replica, +1–2 s at "
            "start)"
        ),
        Env(),
    ] = "inline"
    worker_nice: Annotated[
        Int,
        Field(
            ge=0,
            le=19,
            description="niceness added to the worker process, so that a busy machine serves the "
            "primaries first",
        ),
        Env(),
    ] = 10
    eligibility: Eligibility = Field(
        default_factory=Eligibility, description="which primaries count as greedy"
    )
    history: HistoryConfig = Field(
        default_factory=HistoryConfig,
        description="the estimate's history behind `/tbg/history` and `/ui`",
    )
    tracing: StrictBool = Field(
        False,
        description="OpenTelemetry spans of each trial, its replays and its comparison, in the "
        "primary's trace when the client sent a `traceparent` (needs the `otel` extra; "
        "docs/shadow.md)",
    )
    canary: Annotated[
        Mapping[str, CanaryPolicy], AfterValidator(_read_only), WrapSerializer(_as_dict)
    ] = Field(
        default_factory=lambda: MappingProxyType({}),
        description="per model, a canary upstream and the share of sampled trials replayed on "
        "it instead (docs/canary.md); `<name>` must be a configured model",
    )
    decision_steps: tuple[Annotated[Int, Field(ge=1, le=1_000_000)], ...] = Field(
        (10, 100),
        min_length=1,
        max_length=8,
        description="agent run lengths (steps) for which `GET /tbg` compounds a decision flip "
        "rate p into the chance that a run diverges, 1 - (1 - p)^n (docs/shadow.md)",
    )
    decision_fields: Annotated[
        Int,
        Field(
            ge=0,
            le=256,
            description="top-level JSON fields tracked by name per model for decision flips; "
            "the rest are pooled as `(other)`",
        ),
    ] = 16

    _defaults: ModelPolicy = PrivateAttr()

    @model_validator(mode="before")
    @classmethod
    def _spread_defaults(cls, data: Any) -> Any:
        """`ShadowConfig(defaults=ModelPolicy(...))` in code sets the four policy fields at once
        (a file writes them at the section's top level; a `defaults:` key there is unknown)."""
        if isinstance(data, Mapping) and isinstance(data.get("defaults"), ModelPolicy):
            rest = {k: v for k, v in data.items() if k != "defaults"}
            return {**dict(data["defaults"]), **rest}
        return data

    @field_validator("models", mode="before")
    @classmethod
    def _inherit(cls, value: Any, info: ValidationInfo) -> Any:
        """A model's entry inherits the section's (already validated: they come first) policy
        fields it leaves out; a bad section value is reported once, at the section."""
        if not isinstance(value, Mapping):
            return value
        base = {k: info.data[k] for k in ModelPolicy.model_fields if k in info.data}
        return {n: {**base, **p} if isinstance(p, Mapping) else p for n, p in value.items()}

    @field_validator("tracing")
    @classmethod
    def _tracing_is_installed(cls, value: bool) -> bool:
        from proxy.tracing import MISSING, available

        if value and not available():
            raise ValueError(MISSING)
        return value

    def model_post_init(self, context: Any, /) -> None:
        fields = {k: getattr(self, k) for k in ModelPolicy.model_fields}
        self._defaults = ModelPolicy.model_construct(**fields)  # validated as this section's

    @property
    def defaults(self) -> ModelPolicy:
        """The section's own policy: the one for models without an entry."""
        return self._defaults

    def policy(self, model_name: str) -> ModelPolicy:
        return self.models.get(model_name, self._defaults)


def turned_on(section: Any) -> Any:
    """A non-empty `shadow:` section turns replay on unless it says `enabled`."""
    if isinstance(section, Mapping) and section and "enabled" not in section:
        return {**section, "enabled": True}
    return section


def parse_shadow_config(raw: Mapping[str, Any] | None, where: str = "shadow") -> ShadowConfig:
    """Validate the `shadow:` section on its own (the proxy validates it inside the whole file,
    `proxy.config`); absent section = shadow replay disabled."""
    try:
        return ShadowConfig.model_validate(turned_on(raw or {}))
    except ValidationError as exc:
        raise ShadowConfigError("\n".join(messages(exc, ShadowConfig, where))) from None
