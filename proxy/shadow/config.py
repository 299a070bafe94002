"""The `shadow:` section of the proxy config, validated once into frozen dataclasses."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal


class ShadowConfigError(ValueError):
    """A bad `shadow:` section; the message names the field (`shadow.models.x.sample_rate: ...`)."""


LoadSource = Literal["inflight", "vllm_metrics"]
LogprobsSupport = Literal["auto", "yes", "no"]


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

    def policy(self, model_name: str) -> ModelPolicy:
        return self.models.get(model_name, self.defaults)


_POLICY_KEYS = {"sample_rate", "replays_per_minute", "tokens_per_minute", "ceiling"}
_TOP_KEYS = {
    "enabled",
    "replays",
    "max_concurrent",
    "queue_size",
    "delay_seconds",
    "delay_jitter_seconds",
    "augment_logprobs",
    "top_logprobs",
    "half_life_trials",
    "exemplars",
    "record_text",
    "load_source",
    "load_poll_seconds",
    "replay_timeout_seconds",
    "models",
    "eligibility",
    "logprobs",
    "replay_key_env",
} | _POLICY_KEYS


def as_int(value: Any) -> int | None:
    """The one integer rule for every config section: an int, an integral float (8080.0) or a
    decimal string ("8080", as env vars and flags give); booleans and anything else are None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            number = as_float(text)
            return None if number is None or not number.is_integer() else int(number)
    return None


def as_float(value: Any) -> float | None:
    """The one number rule: an int, a finite float or a numeric string; booleans are None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _number(
    raw: Mapping[str, Any],
    key: str,
    where: str,
    default: float,
    *,
    lo: float,
    hi: float = math.inf,
    lo_open: bool = False,
) -> float:
    value = raw.get(key, default)
    number = as_float(value)
    if number is None:
        raise ShadowConfigError(f"{where}.{key}: expected a number, got {value!r}")
    x = number
    if not math.isfinite(x) or x < lo or x > hi or (lo_open and x == lo):
        bound = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
        raise ShadowConfigError(f"{where}.{key}: {value!r} is outside {bound}")
    return x


def _integer(
    raw: Mapping[str, Any], key: str, where: str, default: int, *, lo: int, hi: int
) -> int:
    value = raw.get(key, default)
    number = as_int(value)
    if number is None or not lo <= number <= hi:
        raise ShadowConfigError(
            f"{where}.{key}: expected an integer in [{lo}, {hi}], got {value!r}"
        )
    return number


def _flag(raw: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise ShadowConfigError(f"{where}.{key}: expected true or false, got {value!r}")
    return value


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ShadowConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


# Renamed fields: a config that still uses the old name gets told what it became and why.
_RENAMED = {
    "half_life_comparisons": "half_life_trials (the estimator's memory now counts replayed "
    "requests, not compared pairs, so it no longer shrinks as `replays` grows)",
}


def _unknown(raw: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(raw) - allowed)
    for name in extra:
        if name in _RENAMED:
            raise ShadowConfigError(f"{where}.{name}: renamed to {_RENAMED[name]}")
    if extra:
        raise ShadowConfigError(f"{where}.{extra[0]}: unknown field (allowed: {sorted(allowed)})")


def _policy(raw: Mapping[str, Any], where: str, base: ModelPolicy) -> ModelPolicy:
    return ModelPolicy(
        sample_rate=_number(raw, "sample_rate", where, base.sample_rate, lo=0.0, hi=1.0),
        replays_per_minute=_number(
            raw, "replays_per_minute", where, base.replays_per_minute, lo=0.0
        ),
        tokens_per_minute=_number(raw, "tokens_per_minute", where, base.tokens_per_minute, lo=0.0),
        ceiling=_number(raw, "ceiling", where, base.ceiling, lo=0.0, lo_open=True),
    )


def parse_shadow_config(raw_in: Mapping[str, Any] | None, where: str = "shadow") -> ShadowConfig:
    """Validate the raw YAML mapping; absent section = shadow replay disabled."""
    raw = _mapping(raw_in, where)
    _unknown(raw, _TOP_KEYS, where)
    defaults = _policy(raw, where, ModelPolicy())
    models_raw = _mapping(raw.get("models"), f"{where}.models")
    models: dict[str, ModelPolicy] = {}
    for name, policy_raw in models_raw.items():
        sub = f"{where}.models.{name}"
        policy_map = _mapping(policy_raw, sub)
        _unknown(policy_map, _POLICY_KEYS, sub)
        models[str(name)] = _policy(policy_map, sub, defaults)
    elig_raw = _mapping(raw.get("eligibility"), f"{where}.eligibility")
    _unknown(elig_raw, {"missing_temperature_is_greedy", "allow_top_k_1"}, f"{where}.eligibility")
    load_source = raw.get("load_source", "inflight")
    if load_source not in ("inflight", "vllm_metrics"):
        raise ShadowConfigError(
            f"{where}.load_source: expected 'inflight' or 'vllm_metrics', got {load_source!r}"
        )
    logprobs = raw.get("logprobs", "auto")
    if logprobs not in ("auto", "yes", "no"):
        raise ShadowConfigError(
            f"{where}.logprobs: expected 'auto', 'yes' or 'no', got {logprobs!r}"
        )
    key_env_raw = _mapping(raw.get("replay_key_env"), f"{where}.replay_key_env")
    for name, env in key_env_raw.items():
        if not isinstance(env, str) or not env:
            raise ShadowConfigError(
                f"{where}.replay_key_env.{name}: expected an environment variable name, got {env!r}"
            )
    return ShadowConfig(
        enabled=_flag(raw, "enabled", where, bool(raw)),
        defaults=defaults,
        models=MappingProxyType(models),
        replays=_integer(raw, "replays", where, 2, lo=1, hi=16),
        max_concurrent=_integer(raw, "max_concurrent", where, 4, lo=1, hi=256),
        queue_size=_integer(raw, "queue_size", where, 256, lo=1, hi=1_000_000),
        delay_seconds=_number(raw, "delay_seconds", where, 0.0, lo=0.0, hi=3600.0),
        delay_jitter_seconds=_number(raw, "delay_jitter_seconds", where, 0.0, lo=0.0, hi=3600.0),
        augment_logprobs=_flag(raw, "augment_logprobs", where, True),
        top_logprobs=_integer(raw, "top_logprobs", where, 5, lo=1, hi=20),
        half_life_trials=_number(raw, "half_life_trials", where, 200.0, lo=0.0, lo_open=True),
        exemplars=_integer(raw, "exemplars", where, 50, lo=0, hi=10_000),
        record_text=_flag(raw, "record_text", where, False),
        load_source=load_source,
        logprobs=logprobs,
        replay_key_env=MappingProxyType({str(k): str(v) for k, v in key_env_raw.items()}),
        load_poll_seconds=_number(raw, "load_poll_seconds", where, 1.0, lo=0.05, hi=3600.0),
        replay_timeout_seconds=_number(
            raw, "replay_timeout_seconds", where, 120.0, lo=0.0, lo_open=True
        ),
        eligibility=Eligibility(
            missing_temperature_is_greedy=_flag(
                elig_raw, "missing_temperature_is_greedy", f"{where}.eligibility", False
            ),
            allow_top_k_1=_flag(elig_raw, "allow_top_k_1", f"{where}.eligibility", True),
        ),
    )
