"""Proxy configuration: YAML file, env vars, flags, validated once into frozen dataclasses.

Precedence (highest wins): command-line flags > `TBG_*` environment variables > the YAML file >
defaults. Secrets never live in the file: an upstream names the env var holding its key
(`api_key_env`), and the proxy's own API keys come from the env var named by `api_keys_env`.
Every validation error is a `ConfigError` whose message starts with the offending field's path,
e.g. `upstreams[1].base_url: must be an absolute http(s) URL`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

from proxy.shadow.config import (
    ShadowConfig,
    ShadowConfigError,
    as_float,
    as_int,
    parse_shadow_config,
)

AuthMode = Literal["passthrough", "inject"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_DRAIN_SECONDS = 30.0
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_FIRST_BYTE_TIMEOUT = 300.0
DEFAULT_TOTAL_TIMEOUT = 900.0

_TOP_FIELDS = frozenset(
    {
        "host",
        "port",
        "max_body_bytes",
        "drain_seconds",
        "api_keys_env",
        "log_level",
        "default_upstream",
        "upstreams",
        "shadow",
    }
)
_UPSTREAM_FIELDS = frozenset({"name", "base_url", "api_key_env", "auth", "timeouts", "models"})
_TIMEOUT_FIELDS = frozenset({"connect", "first_byte", "total"})
_LOG_LEVELS = frozenset({"DEBUG", "INFO", "WARNING", "ERROR"})


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
    """Merge the three sources and validate; raises ConfigError naming the field."""
    _reject_unknown(data, _TOP_FIELDS, "")
    merged: dict[str, Any] = dict(data)
    env_map = {
        "host": "TBG_HOST",
        "port": "TBG_PORT",
        "max_body_bytes": "TBG_MAX_BODY_BYTES",
        "drain_seconds": "TBG_DRAIN_SECONDS",
        "api_keys_env": "TBG_API_KEYS_ENV",
        "log_level": "TBG_LOG_LEVEL",
        "default_upstream": "TBG_DEFAULT_UPSTREAM",
    }
    for key, var in env_map.items():
        if environ.get(var):
            merged[key] = environ[var]
    cli_upstreams: tuple[str, ...] = overrides.upstreams
    if not cli_upstreams and environ.get("TBG_UPSTREAM"):
        cli_upstreams = tuple(u.strip() for u in environ["TBG_UPSTREAM"].split(",") if u.strip())
    for key in ("host", "port", "max_body_bytes", "drain_seconds", "api_keys_env", "log_level"):
        value = getattr(overrides, key)
        if value is not None:
            merged[key] = value

    if overrides.models and len(cli_upstreams) != 1:
        raise ConfigError(
            "--model: needs exactly one --upstream (with a config file, list models under "
            "upstreams[].models)"
        )
    if cli_upstreams:
        upstreams = tuple(_upstream_from_flag(i, spec) for i, spec in enumerate(cli_upstreams))
        if overrides.models:
            models = tuple(_str(m, f"--model[{j}]") for j, m in enumerate(overrides.models))
            upstreams = (replace(upstreams[0], models=models),)
        # The file's upstreams are replaced, so its default_upstream no longer applies.
        merged["default_upstream"] = environ.get("TBG_DEFAULT_UPSTREAM") or upstreams[0].name
    else:
        raw = merged.get("upstreams")
        if raw is None:
            raise ConfigError("upstreams: at least one upstream is required (or --upstream URL)")
        if not isinstance(raw, Sequence) or isinstance(raw, str) or not raw:
            raise ConfigError("upstreams: must be a non-empty list")
        upstreams = tuple(_upstream(i, item, environ) for i, item in enumerate(raw))

    _check_unique(upstreams)
    default = merged.get("default_upstream", upstreams[0].name)
    if not isinstance(default, str) or default not in {u.name for u in upstreams}:
        raise ConfigError(f"default_upstream: no upstream is named {default!r}")

    api_keys_env = _opt_str(merged.get("api_keys_env"), "api_keys_env")
    api_keys: tuple[str, ...] = ()
    if api_keys_env:
        if api_keys_env not in environ:
            raise ConfigError(f"api_keys_env: environment variable {api_keys_env} is not set")
        api_keys = tuple(k.strip() for k in environ[api_keys_env].split(",") if k.strip())
        if not api_keys:
            raise ConfigError(f"api_keys_env: environment variable {api_keys_env} holds no keys")

    shadow_raw = merged.get("shadow") or {}
    if not isinstance(shadow_raw, Mapping):
        raise ConfigError("shadow: must be a mapping")
    shadow = dict(shadow_raw)
    for key in ("sample_rate", "replays", "ceiling"):
        value = getattr(overrides, key)
        if value is not None:
            shadow[key] = value
            shadow["enabled"] = True  # a quick-start shadow flag turns replay on
    shadow_config = _shadow(shadow, upstreams)
    replay_keys = _replay_keys(shadow_config, upstreams, environ)
    log_level = str(merged.get("log_level", "INFO")).upper()
    if log_level not in _LOG_LEVELS:
        raise ConfigError(f"log_level: must be one of {sorted(_LOG_LEVELS)}")

    return Config(
        upstreams=upstreams,
        default_upstream=default,
        host=_str(merged.get("host", DEFAULT_HOST), "host"),
        port=_int(merged.get("port", DEFAULT_PORT), "port", low=0, high=65535),
        max_body_bytes=_int(
            merged.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES), "max_body_bytes", low=1
        ),
        drain_seconds=_float(merged.get("drain_seconds", DEFAULT_DRAIN_SECONDS), "drain_seconds"),
        log_level=log_level,
        api_keys_env=api_keys_env,
        api_keys=api_keys,
        shadow=MappingProxyType(shadow),
        shadow_config=shadow_config,
        replay_keys=MappingProxyType(replay_keys),
    )


def _shadow(raw: Mapping[str, Any], upstreams: Sequence[UpstreamConfig]) -> ShadowConfig:
    """Validate `shadow:` here, with the rest, so a bad value exits 2 like any other field."""
    try:
        shadow = parse_shadow_config(raw)
    except ShadowConfigError as exc:
        raise ConfigError(str(exc)) from None
    served = {m for u in upstreams for m in u.models}
    if served:  # with no model lists every upstream serves any name: nothing to check against
        for name in shadow.models:
            if name not in served:
                raise ConfigError(
                    f"shadow.models.{name}: no upstream serves model {name!r} "
                    f"(configured: {', '.join(sorted(served))})"
                )
    return shadow


def _replay_keys(
    shadow: ShadowConfig, upstreams: Sequence[UpstreamConfig], environ: Mapping[str, str]
) -> dict[str, str]:
    """Resolve `shadow.replay_key_env` from the injected environment (never os.environ)."""
    names = {u.name for u in upstreams}
    keys: dict[str, str] = {}
    for upstream, env in shadow.replay_key_env.items():
        where = f"shadow.replay_key_env.{upstream}"
        if upstream not in names:
            raise ConfigError(f"{where}: no upstream named {upstream!r}")
        value = environ.get(env)
        if not value:
            raise ConfigError(f"{where}: environment variable {env} is not set")
        keys[upstream] = value
    return keys


def _upstream_from_flag(index: int, spec: str) -> UpstreamConfig:
    """`--upstream URL` or `--upstream NAME=URL`; passthrough auth, serves every model."""
    name, sep, url = spec.partition("=")
    if not sep or "://" in name:
        name, url = ("default" if index == 0 else f"upstream{index}"), spec
    where = f"upstreams[{index}]"
    return UpstreamConfig(
        name=_name(name, f"{where}.name"), base_url=_url(url, f"{where}.base_url")
    )


def _upstream(index: int, item: Any, environ: Mapping[str, str]) -> UpstreamConfig:
    where = f"upstreams[{index}]"
    if not isinstance(item, Mapping):
        raise ConfigError(f"{where}: must be a mapping")
    _reject_unknown(item, _UPSTREAM_FIELDS, where)
    if "name" not in item:
        raise ConfigError(f"{where}.name: required")
    if "base_url" not in item:
        raise ConfigError(f"{where}.base_url: required")
    name = _name(item["name"], f"{where}.name")
    base_url = _url(item["base_url"], f"{where}.base_url")
    key_env = _opt_str(item.get("api_key_env"), f"{where}.api_key_env")
    api_key: str | None = None
    if key_env is not None:
        if key_env not in environ:
            raise ConfigError(f"{where}.api_key_env: environment variable {key_env} is not set")
        api_key = environ[key_env]
    auth = item.get("auth", "inject" if key_env else "passthrough")
    if auth not in ("passthrough", "inject"):
        raise ConfigError(f"{where}.auth: must be 'passthrough' or 'inject', got {auth!r}")
    if auth == "inject" and key_env is None:
        raise ConfigError(f"{where}.auth: 'inject' needs api_key_env")
    models_raw = item.get("models", [])
    if not isinstance(models_raw, Sequence) or isinstance(models_raw, str):
        raise ConfigError(f"{where}.models: must be a list of model names")
    models = tuple(_str(m, f"{where}.models[{j}]") for j, m in enumerate(models_raw))
    return UpstreamConfig(
        name=name,
        base_url=base_url,
        auth=auth,
        api_key_env=key_env,
        api_key=api_key,
        timeouts=_timeouts(item.get("timeouts"), f"{where}.timeouts"),
        models=models,
    )


def _timeouts(raw: Any, where: str) -> Timeouts:
    if raw is None:
        return Timeouts()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a mapping")
    _reject_unknown(raw, _TIMEOUT_FIELDS, where)
    total_raw = raw.get("total", DEFAULT_TOTAL_TIMEOUT)
    return Timeouts(
        connect=_float(raw.get("connect", DEFAULT_CONNECT_TIMEOUT), f"{where}.connect", pos=True),
        first_byte=_float(
            raw.get("first_byte", DEFAULT_FIRST_BYTE_TIMEOUT), f"{where}.first_byte", pos=True
        ),
        total=None if total_raw is None else _float(total_raw, f"{where}.total", pos=True),
    )


def _check_unique(upstreams: Sequence[UpstreamConfig]) -> None:
    names: set[str] = set()
    served: dict[str, str] = {}
    for i, upstream in enumerate(upstreams):
        if upstream.name in names:
            raise ConfigError(f"upstreams[{i}].name: duplicate upstream name {upstream.name!r}")
        names.add(upstream.name)
        for j, model in enumerate(upstream.models):
            if model in served:
                raise ConfigError(
                    f"upstreams[{i}].models[{j}]: model {model!r} is already served by "
                    f"upstream {served[model]!r}"
                )
            served[model] = upstream.name


def _reject_unknown(data: Mapping[str, Any], known: frozenset[str], where: str) -> None:
    for key in data:
        if key not in known:
            path = f"{where}.{key}" if where else str(key)
            raise ConfigError(f"{path}: unknown field (known: {', '.join(sorted(known))})")


def _name(value: Any, where: str) -> str:
    name = _str(value, where)
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ConfigError(f"{where}: use letters, digits, '-', '_' or '.', got {name!r}")
    return name


def _url(value: Any, where: str) -> str:
    url = _str(value, where)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise ConfigError(f"{where}: must be an absolute http(s) URL without query, got {url!r}")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise ConfigError(f"{where}: bad port in {url!r}") from None
    return url.rstrip("/")


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: must be a non-empty string")
    return value


def _opt_str(value: Any, where: str) -> str | None:
    return None if value is None else _str(value, where)


def _int(value: Any, where: str, *, low: int, high: int | None = None) -> int:
    number = as_int(value)
    if number is None or number < low or (high is not None and number > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigError(f"{where}: must be an integer {bounds}, got {value!r}")
    return number


def _float(value: Any, where: str, *, pos: bool = False) -> float:
    number = as_float(value)
    if number is None or number < 0 or (pos and number == 0):
        raise ConfigError(f"{where}: must be a {'positive' if pos else 'non-negative'} number")
    return number
