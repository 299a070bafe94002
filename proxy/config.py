"""Loading the proxy configuration: the YAML file, `TBG_*` environment variables and flags, merged
by one function and validated once into the frozen models of `proxy.schema`.

Precedence (highest wins): command-line flags > `TBG_*` environment variables > the YAML file >
defaults. Which fields have a variable or a flag is said by the field itself (proxy/sources.py).
Secrets never live in the file: an upstream names the env var holding its key (`api_key_env`), and
the proxy's own API keys come from the env var named by `api_keys_env`. Every validation error is a
`ConfigError` whose message starts with the offending field's path, e.g.
`upstreams[1].base_url: must be an absolute http(s) URL`, all of them at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml
from pydantic import ValidationError

from proxy.schema import AuthMode, Config, Timeouts, UpstreamClient, UpstreamConfig
from proxy.shadow.config import turned_on
from proxy.sources import Knob, knobs, merge
from proxy.validation import messages

__all__ = [
    "DEFAULT_CLIENT_KEEPALIVE",
    "KNOBS",
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

# Every field with a TBG_* variable or a `tbg serve` flag, walked from the schema once.
KNOBS: tuple[Knob, ...] = knobs(Config)
_FLAG_DESTS = frozenset(k.dest for k in KNOBS if k.flag is not None)
DEFAULT_CLIENT_KEEPALIVE: float = Config.model_fields["client_keepalive_seconds"].default


class ConfigError(ValueError):
    """A bad configuration; the message names the field (`upstreams[0].base_url: ...`)."""


@dataclass(frozen=True, slots=True, init=False)
class Overrides:
    """Values given on the command line, None = not given: the file, the `--upstream` and
    `--model` lists, and one value per field flag, keyed by the field's name
    (`Overrides(port=9200, sample_rate="0.5")`; strings go through the schema like YAML values)."""

    config_file: str | None
    upstreams: tuple[str, ...]
    # Quick start (`tbg serve --upstream URL --model M`): models served by the one flag upstream;
    # naming one, or giving any flag of a `shadow:` field, turns shadow replay on.
    models: tuple[str, ...]
    values: Mapping[str, Any]

    def __init__(
        self,
        config_file: str | None = None,
        upstreams: tuple[str, ...] = (),
        models: tuple[str, ...] = (),
        **values: Any,
    ) -> None:
        unknown = sorted(set(values) - _FLAG_DESTS)
        if unknown:
            raise TypeError(f"Overrides: no flag sets {', '.join(unknown)}")
        object.__setattr__(self, "config_file", config_file)
        object.__setattr__(self, "upstreams", tuple(upstreams))
        object.__setattr__(self, "models", tuple(models))
        given = {k: v for k, v in values.items() if v is not None}
        object.__setattr__(self, "values", MappingProxyType(given))


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
    """Merge the three sources and validate them in one pass against `Config`; raises
    ConfigError listing every bad field (`path: detail` lines)."""
    merged = _merge(data, environ, overrides)
    try:
        return Config.model_validate(merged, context={"environ": environ})
    except ValidationError as exc:
        raise ConfigError("\n".join(messages(exc, Config))) from None


def _merge(
    data: Mapping[str, Any], environ: Mapping[str, str], overrides: Overrides
) -> dict[str, Any]:
    """The file with its non-empty `shadow:` section turned on (unless it says `enabled`), then
    `proxy.sources.merge` (TBG_* variables, then flags), then the list flags. A quick start (a
    model named, or a `shadow:` field flag) turns replay on; TBG_SHADOW_* variables do not."""
    merged = dict(data)
    if merged.get("shadow") is None:  # `shadow:` with nothing under it is no section
        merged.pop("shadow", None)
    else:
        merged["shadow"] = turned_on(merged["shadow"])
    merged = merge(merged, environ, overrides.values, KNOBS)
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
    quick = any(k.path[0] == "shadow" and k.dest in overrides.values for k in KNOBS if k.flag)
    if quick or overrides.models:  # a quick start that names a model, or tunes replay, measures
        shadow = merged.get("shadow")
        merged["shadow"] = {**(shadow if isinstance(shadow, Mapping) else {}), "enabled": True}
    return merged


def _flag_upstream(index: int, spec: str) -> dict[str, Any]:
    """`--upstream URL` or `--upstream NAME=URL`: passthrough auth, serves every model."""
    name, sep, url = spec.partition("=")
    if not sep or "://" in name:
        name, url = ("default" if index == 0 else f"upstream{index}"), spec
    return {"name": name, "base_url": url}
