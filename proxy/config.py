"""Proxy configuration: YAML file, env vars, flags, validated once into frozen dataclasses.

Precedence (highest wins): command-line flags > `TBG_*` environment variables > the YAML file >
defaults. Secrets never live in the file: an upstream names the env var holding its key
(`api_key_env`), and the proxy's own API keys come from the env var named by `api_keys_env`.
Every validation error is a `ConfigError` whose message starts with the offending field's path,
e.g. `upstreams[1].base_url: must be an absolute http(s) URL`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml
from pydantic import ValidationError

from proxy.schema import (
    DEFAULT_CLIENT_BODY_TIMEOUT,
    DEFAULT_CLIENT_KEEPALIVE,
    DEFAULT_CLIENT_WRITE_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DRAIN_SECONDS,
    DEFAULT_FIRST_BYTE_TIMEOUT,
    DEFAULT_HOST,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_PORT,
    DEFAULT_TOTAL_TIMEOUT,
    AuthMode,
    FileSchema,
    UpstreamClient,
)
from proxy.shadow.config import ShadowConfig
from proxy.validation import messages

__all__ = [
    "DEFAULT_CLIENT_KEEPALIVE",
    "DEFAULT_DRAIN_SECONDS",
    "DEFAULT_HOST",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_PORT",
    "AuthMode",
    "Config",
    "ConfigError",
    "Overrides",
    "Timeouts",
    "UpstreamClient",
    "UpstreamConfig",
    "build_config",
    "load_config",
    "read_yaml",
]

# TBG_* variables, each the same as one top-level field.
ENV_VARS = {
    "host": "TBG_HOST",
    "port": "TBG_PORT",
    "max_body_bytes": "TBG_MAX_BODY_BYTES",
    "drain_seconds": "TBG_DRAIN_SECONDS",
    "client_keepalive_seconds": "TBG_CLIENT_KEEPALIVE_SECONDS",
    "client_body_timeout_seconds": "TBG_CLIENT_BODY_TIMEOUT_SECONDS",
    "client_write_timeout_seconds": "TBG_CLIENT_WRITE_TIMEOUT_SECONDS",
    "max_connections": "TBG_MAX_CONNECTIONS",
    "upstream_client": "TBG_UPSTREAM_CLIENT",
    "api_keys_env": "TBG_API_KEYS_ENV",
    "log_level": "TBG_LOG_LEVEL",
    "default_upstream": "TBG_DEFAULT_UPSTREAM",
}
# TBG_* variables that set one `shadow:` field (without turning replay on).
SHADOW_ENV_VARS = {"worker": "TBG_SHADOW_WORKER", "worker_nice": "TBG_SHADOW_WORKER_NICE"}
# Flags that set one top-level field (the rest of Overrides is handled by build_config).
_FLAG_FIELDS = (
    "host",
    "port",
    "max_body_bytes",
    "drain_seconds",
    "client_keepalive_seconds",
    "upstream_client",
    "api_keys_env",
    "log_level",
)


class ConfigError(ValueError):
    """A bad configuration; the message names the field (`upstreams[0].base_url: ...`)."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-upstream timeouts in seconds; `total=None` means no overall limit."""

    connect: float = DEFAULT_CONNECT_TIMEOUT
    first_byte: float = DEFAULT_FIRST_BYTE_TIMEOUT  # request sent -> response headers received
    total: float | None = DEFAULT_TOTAL_TIMEOUT  # whole exchange, body included


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """One OpenAI-compatible upstream, with its key already resolved from the environment."""

    name: str
    base_url: str  # e.g. http://127.0.0.1:8000/v1, no trailing slash
    auth: AuthMode = "passthrough"
    api_key_env: str | None = None
    api_key: str | None = field(default=None, repr=False)
    timeouts: Timeouts = field(default_factory=Timeouts)
    models: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated proxy configuration."""

    upstreams: tuple[UpstreamConfig, ...]
    default_upstream: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    drain_seconds: float = DEFAULT_DRAIN_SECONDS
    client_keepalive_seconds: float = DEFAULT_CLIENT_KEEPALIVE
    client_body_timeout_seconds: float = DEFAULT_CLIENT_BODY_TIMEOUT
    client_write_timeout_seconds: float = DEFAULT_CLIENT_WRITE_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    upstream_client: UpstreamClient = "lean"
    log_level: str = "INFO"
    api_keys_env: str | None = None
    api_keys: tuple[str, ...] = field(default=(), repr=False)  # empty: proxy auth off
    # The YAML `shadow:` section as given (quick-start flags merged in), kept for reference;
    # `shadow_config` is the validated form every consumer uses.
    shadow: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    shadow_config: ShadowConfig = field(default_factory=ShadowConfig)
    # upstream name -> key from `shadow.replay_key_env`, resolved from the injected environment.
    replay_keys: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), repr=False)

    def upstream(self, name: str) -> UpstreamConfig:
        for upstream in self.upstreams:
            if upstream.name == name:
                return upstream
        raise KeyError(name)


@dataclass(frozen=True, slots=True)
class Overrides:
    """Values given on the command line; None = not given."""

    config_file: str | None = None
    upstreams: tuple[str, ...] = ()
    host: str | None = None
    port: int | None = None
    max_body_bytes: int | None = None
    drain_seconds: float | None = None
    api_keys_env: str | None = None
    log_level: str | None = None
    client_keepalive_seconds: float | None = None
    upstream_client: str | None = None
    # Quick start (`tbg serve --upstream URL --model M --sample-rate R`): models served by the one
    # flag upstream, and shadow settings that also turn shadow replay on.
    models: tuple[str, ...] = ()
    sample_rate: float | str | None = None  # strings go through the schema like YAML values
    replays: int | str | None = None
    ceiling: float | str | None = None


def load_config(overrides: Overrides, environ: Mapping[str, str]) -> Config:
    """Read the file (flag, else `TBG_CONFIG`), apply env vars and flags, validate."""
    path = overrides.config_file or environ.get("TBG_CONFIG")
    data: Mapping[str, Any] = {}
    if path:
        data = read_yaml(Path(path))
    return build_config(data, environ, overrides)


def read_yaml(path: Path) -> Mapping[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config: {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"config: {path} must hold a mapping at the top level")
    return data


def build_config(
    data: Mapping[str, Any], environ: Mapping[str, str], overrides: Overrides = Overrides()
) -> Config:
    """Merge the three sources, validate them in one pass against `FileSchema`, and return the
    frozen runtime values; raises ConfigError listing every bad field (`path: detail` lines)."""
    merged, shadow_given = _merge(data, environ, overrides)
    try:
        schema = FileSchema.model_validate(merged, context={"environ": environ})
    except ValidationError as exc:
        raise ConfigError("\n".join(messages(exc, FileSchema))) from None
    return _runtime(schema, merged, environ, shadow_given=shadow_given)


def _merge(
    data: Mapping[str, Any], environ: Mapping[str, str], overrides: Overrides
) -> tuple[dict[str, Any], bool]:
    """File < TBG_* variables < flags, in the file's shape; and whether a `shadow:` section was
    given (file or quick-start flags: a non-empty one turns replay on by default; the
    TBG_SHADOW_WORKER* variables set fields without doing so)."""
    merged: dict[str, Any] = dict(data)
    for key, var in ENV_VARS.items():
        if environ.get(var):
            merged[key] = environ[var]
    for key in _FLAG_FIELDS:
        value = getattr(overrides, key)
        if value is not None:
            merged[key] = value
    flags = overrides.upstreams
    if not flags and environ.get("TBG_UPSTREAM"):
        flags = tuple(u.strip() for u in environ["TBG_UPSTREAM"].split(",") if u.strip())
    if overrides.models and len(flags) != 1:
        raise ConfigError(
            "--model: needs exactly one --upstream (with a config file, list models under "
            "upstreams[].models)"
        )
    if flags:
        merged["upstreams"] = [_flag_upstream(i, spec) for i, spec in enumerate(flags)]
        if overrides.models:
            merged["upstreams"][0]["models"] = list(overrides.models)
        # The file's upstreams are replaced, so its default_upstream no longer applies.
        merged["default_upstream"] = environ.get("TBG_DEFAULT_UPSTREAM") or None
    elif merged.get("upstreams") is None:
        raise ConfigError("upstreams: at least one upstream is required (or --upstream URL)")
    shadow = merged.get("shadow")
    quick = {k: getattr(overrides, k) for k in ("sample_rate", "replays", "ceiling")}
    quick = {k: v for k, v in quick.items() if v is not None}
    if quick or overrides.models:  # a quick start that names a model, or tunes replay, measures
        base = dict(shadow) if isinstance(shadow, Mapping) else {}
        merged["shadow"] = {**base, **quick, "enabled": True}
    elif shadow is None:
        merged.pop("shadow", None)
    shadow_given = bool(merged.get("shadow"))
    from_env = {k: environ[v] for k, v in SHADOW_ENV_VARS.items() if environ.get(v)}
    if from_env:
        shadow = merged.get("shadow")
        merged["shadow"] = {**(shadow if isinstance(shadow, Mapping) else {}), **from_env}
    return merged, shadow_given


def _flag_upstream(index: int, spec: str) -> dict[str, Any]:
    """`--upstream URL` or `--upstream NAME=URL`: passthrough auth, serves every model."""
    name, sep, url = spec.partition("=")
    if not sep or "://" in name:
        name, url = ("default" if index == 0 else f"upstream{index}"), spec
    return {"name": name, "base_url": url}


def _runtime(
    schema: FileSchema, merged: Mapping[str, Any], environ: Mapping[str, str], *, shadow_given: bool
) -> Config:
    upstreams = tuple(
        UpstreamConfig(
            name=u.name,
            base_url=u.base_url,
            auth=u.auth_mode,
            api_key_env=u.api_key_env,
            api_key=None if u.api_key_env is None else environ[u.api_key_env],
            timeouts=Timeouts(
                connect=u.timeouts.connect,
                first_byte=u.timeouts.first_byte,
                total=u.timeouts.total,
            ),
            models=tuple(u.models),
        )
        for u in schema.upstreams
    )
    api_keys: tuple[str, ...] = ()
    if schema.api_keys_env is not None:
        raw_keys = environ[schema.api_keys_env].split(",")
        api_keys = tuple(k.strip() for k in raw_keys if k.strip())
    shadow_raw = merged.get("shadow") or {}
    return Config(
        upstreams=upstreams,
        default_upstream=schema.default_upstream or upstreams[0].name,
        host=schema.host,
        port=schema.port,
        max_body_bytes=schema.max_body_bytes,
        drain_seconds=schema.drain_seconds,
        client_keepalive_seconds=schema.client_keepalive_seconds,
        client_body_timeout_seconds=schema.client_body_timeout_seconds,
        client_write_timeout_seconds=schema.client_write_timeout_seconds,
        max_connections=schema.max_connections,
        upstream_client=schema.upstream_client,
        log_level=schema.log_level,
        api_keys_env=schema.api_keys_env,
        api_keys=api_keys,
        shadow=MappingProxyType(dict(shadow_raw)),
        shadow_config=schema.shadow.to_config(non_empty=shadow_given),
        replay_keys=MappingProxyType(
            {name: environ[env] for name, env in schema.shadow.replay_key_env.items()}
        ),
    )
