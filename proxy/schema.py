"""The proxy's configuration: one pydantic model per section, and the models are the runtime values
(frozen, unknown keys refused). Each field is declared here once: its type, bounds, default,
meaning (the tables of docs/configuration.md, `python -m proxy.schema`; a test keeps the two equal)
and, by an `Env()`/`Flag()` marker, its `TBG_*` variable and `tbg serve` flag (proxy/sources.py).

`Config.model_validate(merged, context={"environ": env})` is the one pass that checks every field and
every cross-field rule, and resolves the keys the file only names (`api_key`, `api_keys`,
`replay_keys`: private, out of reprs and dumps); `proxy.config.build_config` merges the sources
before it. Built in code without that context (tests, embedders), the environment is not consulted.

Why pydantic (v2) and not msgspec: it is already installed with tbg-proxy (the `openai` runtime
dependency requires it), it reports every bad field in one pass, and its error locations map one to
one onto our `path.to.field: ...` messages; msgspec stops at the first error and would be a new
dependency. Its import cost (≈ 0.2 s) is paid once per start.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from proxy.fleet_config import Discovery, ModelDiscovery
from proxy.shadow.canary_config import check_canaries
from proxy.shadow.config import ShadowConfig
from proxy.sources import Env, Flag
from proxy.validation import Int, Number, Section, Text, field_error

AuthMode = Literal["passthrough", "inject"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
UpstreamClient = Literal["lean"]  # the one upstream client; the field stays only to refuse it


def _name(value: str) -> str:
    if not value.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ValueError(f"use letters, digits, '-', '_' or '.', got {value!r}")
    return value


def _url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise ValueError(f"must be an absolute http(s) URL without query, got {value!r}")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise ValueError(f"bad port in {value!r}") from None
    return value.rstrip("/")


def _client_removed(value: Any) -> Any:
    raise ValueError(
        "removed: the proxy has one upstream client; delete the setting "
        "(file key, TBG_UPSTREAM_CLIENT or --upstream-client)"
    )


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


def _environ(info: ValidationInfo) -> Mapping[str, str] | None:
    """The injected environment; None when the model is built in code (nothing to check)."""
    environ: Mapping[str, str] | None = (info.context or {}).get("environ")
    return environ


Name = Annotated[Text, AfterValidator(_name)]
Url = Annotated[Text, AfterValidator(_url)]
Seconds = Annotated[Number, Field(gt=0.0)]


class Timeouts(Section):
    """`upstreams[i].timeouts`: per-upstream limits in seconds."""

    connect: Seconds = Field(10.0, description="TCP/TLS connect")
    first_byte: Seconds = Field(
        300.0, description="request sent -> response headers; exceeded: 504"
    )
    total: Seconds | None = Field(
        900.0, description="the whole exchange incl. a streamed body; `null`: no limit"
    )


class UpstreamConfig(Section):
    """`upstreams[i]`: one OpenAI-compatible upstream; its key is read from the environment."""

    name: Name = Field(description="metric label and routing name; unique")
    base_url: Url = Field(
        description="OpenAI base URL (`http://host:8000/v1`); the proxy appends the path after "
        "`/v1` and the client's query string"
    )
    api_key_env: Text | None = Field(
        None, description="env var holding the upstream's key; a missing variable is an error"
    )
    auth: AuthMode = Field(
        None,  # resolved by _auth_default from api_key_env
        validate_default=True,
        description="`inject` sends `Authorization: Bearer <key>` (the default when "
        "`api_key_env` is set); `passthrough` forwards the client's header unchanged (the "
        "default without)",
    )
    timeouts: Timeouts = Field(default_factory=Timeouts, description="seconds")
    models: tuple[Text, ...] = Field(
        (),
        description="models served, routed by the body's `model`; a model listed under two "
        "upstreams is an error; unlisted models go to `default_upstream` (label `other`)",
    )
    discovery: Discovery = Field(
        default_factory=Discovery,
        description='endpoints from DNS (docs/deploy.md, "The fleet case")',
    )
    model_discovery: ModelDiscovery = Field(
        default_factory=ModelDiscovery, description="models from `{base_url}/models`"
    )

    _api_key: str | None = PrivateAttr(None)

    @field_validator("api_key_env")
    @classmethod
    def _key_is_set(cls, value: str | None, info: ValidationInfo) -> str | None:
        environ = _environ(info)
        if value is not None and environ is not None and value not in environ:
            raise ValueError(f"environment variable {value} is not set")
        return value

    @field_validator("auth", mode="before")
    @classmethod
    def _auth_default(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return "inject" if info.data.get("api_key_env") else "passthrough"
        return value

    @model_validator(mode="after")
    def _inject_needs_a_key(self) -> UpstreamConfig:
        if self.auth == "inject" and self.api_key_env is None:
            raise field_error("auth", "'inject' needs api_key_env")
        return self

    def model_post_init(self, context: Any, /) -> None:
        environ = (context or {}).get("environ")
        if environ is not None and self.api_key_env is not None:
            self._api_key = environ.get(self.api_key_env)

    @property
    def api_key(self) -> str | None:
        """The key from `api_key_env` (out of reprs and dumps)."""
        return self._api_key


class Config(Section):
    """The whole proxy configuration: the file, with `TBG_*` variables and flags merged into it."""

    host: Annotated[Text, Env(), Flag("--host", "H")] = Field(
        "127.0.0.1", description="listen address"
    )
    port: Annotated[Int, Field(ge=0, le=65535), Env(), Flag("--port", "P")] = Field(
        8080, description="listen port"
    )
    max_body_bytes: Annotated[Int, Field(ge=1), Env(), Flag("--max-body-bytes", "N")] = Field(
        8 * 1024 * 1024,
        description="larger request bodies are refused with 413 before anything reaches an "
        "upstream",
    )
    drain_seconds: Annotated[Number, Field(ge=0.0), Env(), Flag("--drain-seconds", "S")] = Field(
        30.0, description="graceful shutdown deadline for in-flight requests"
    )
    client_keepalive_seconds: Annotated[Seconds, Env(), Flag("--client-keepalive-seconds", "S")] = (
        Field(
            75.0,  # nginx's keepalive_timeout
            description="an idle client connection, or a request head still arriving "
            "(slowloris), is closed this long after the connection opened or its previous "
            "response ended",
        )
    )
    client_body_timeout_seconds: Annotated[Seconds, Env()] = Field(
        60.0,  # nginx's client_body_timeout (here: for the whole body)
        description="a request body must arrive in full within this long after its head; "
        "slower: 408 and the connection is closed",
    )
    client_write_timeout_seconds: Annotated[Seconds, Env()] = Field(
        60.0,  # nginx's send_timeout
        description="a response write that waits this long for a client that does not read is "
        "abandoned: the connection is closed and the upstream request cancelled",
    )
    max_connections: Annotated[Int, Field(ge=1), Env()] = Field(
        1024, description="open client connections; one more is answered 503 and closed"
    )
    upstream_client: Annotated[
        UpstreamClient, BeforeValidator(_client_removed), Env(), Flag("--upstream-client")
    ] = Field(
        "lean",
        description="removed (any value is an error at start): every upstream request goes "
        "through the one keep-alive HTTP/1.1 client",
    )
    log_level: Annotated[LogLevel, BeforeValidator(_upper), Env(), Flag("--log-level")] = Field(
        "INFO", description="JSON log level (any case)"
    )
    api_keys_env: Annotated[Text | None, Env(), Flag("--api-keys-env", "VAR")] = Field(
        None,
        description="env var with the proxy's own API keys (comma-separated); set: every "
        "`/v1/*` request needs `Authorization: Bearer <one of them>`",
    )
    upstreams: tuple[UpstreamConfig, ...] = Field(
        min_length=1, description="the upstreams (required unless `--upstream` is given)"
    )
    default_upstream: Annotated[Text, Env()] = Field(  # type: ignore[assignment]
        None,  # the first upstream's name, filled in by _first_upstream
        description="target for unlisted models and model-less paths; default: the first upstream",
    )
    # `shadow:` in the file and `Config(shadow=...)` in code; read as `config.shadow_config`.
    shadow_config: ShadowConfig = Field(
        default_factory=ShadowConfig,
        alias="shadow",
        description="shadow replay, the section below; absent: replay off",
    )

    _api_keys: tuple[str, ...] = PrivateAttr(())
    _replay_keys: Mapping[str, str] = PrivateAttr(default_factory=lambda: MappingProxyType({}))

    @field_validator("api_keys_env")
    @classmethod
    def _keys_are_set(cls, value: str | None, info: ValidationInfo) -> str | None:
        environ = _environ(info)
        if value is None or environ is None:
            return value
        if value not in environ:
            raise ValueError(f"environment variable {value} is not set")
        if not _split_keys(environ[value]):
            raise ValueError(f"environment variable {value} holds no keys")
        return value

    @model_validator(mode="before")
    @classmethod
    def _first_upstream(cls, data: Any) -> Any:
        """No `default_upstream`: the first upstream's name (when upstreams are wrong, they are
        reported, not this field)."""
        if not isinstance(data, Mapping) or data.get("default_upstream") is not None:
            return data
        upstreams = data.get("upstreams")
        first = upstreams[0] if isinstance(upstreams, list | tuple) and upstreams else None
        name = first.get("name") if isinstance(first, Mapping) else getattr(first, "name", None)
        return {**data, "default_upstream": name} if isinstance(name, str) else data

    @model_validator(mode="after")
    def _cross_field(self, info: ValidationInfo) -> Config:
        """The rules that span sections; each error names the field to change."""
        names: set[str] = set()
        served: dict[str, str] = {}
        for i, upstream in enumerate(self.upstreams):
            if upstream.name in names:
                raise field_error(
                    f"upstreams[{i}].name", f"duplicate upstream name {upstream.name!r}"
                )
            names.add(upstream.name)
            for j, model in enumerate(upstream.models):
                if model in served:
                    raise field_error(
                        f"upstreams[{i}].models[{j}]",
                        f"model {model!r} is already served by upstream {served[model]!r}",
                    )
                served[model] = upstream.name
        if self.default_upstream not in names:
            raise field_error("default_upstream", f"no upstream is named {self.default_upstream!r}")
        shadow = self.shadow_config
        if served:  # with no model lists every upstream serves any name: nothing to check
            for model in shadow.models:
                if model not in served:
                    raise field_error(
                        f"shadow.models.{model}",
                        f"no upstream serves model {model!r} "
                        f"(configured: {', '.join(sorted(served))})",
                    )
        environ = _environ(info)
        for upstream_name, env in shadow.replay_key_env.items():
            where = f"shadow.replay_key_env.{upstream_name}"
            if upstream_name not in names:
                raise field_error(where, f"no upstream named {upstream_name!r}")
            if environ is not None and not environ.get(env):
                raise field_error(where, f"environment variable {env} is not set")
        canary_error = check_canaries(shadow.canary, names, served)
        if canary_error is not None:
            raise canary_error
        return self

    def model_post_init(self, context: Any, /) -> None:
        environ = (context or {}).get("environ")
        if environ is None:
            return
        if self.api_keys_env is not None:
            self._api_keys = _split_keys(environ[self.api_keys_env])
        # Runs before _cross_field, which reports a variable that is not set.
        pairs = self.shadow_config.replay_key_env.items()
        keys = {name: environ[env] for name, env in pairs if environ.get(env)}
        self._replay_keys = MappingProxyType(keys)

    @property
    def api_keys(self) -> tuple[str, ...]:
        """The proxy's own keys from `api_keys_env`; empty: proxy auth off."""
        return self._api_keys

    @property
    def replay_keys(self) -> Mapping[str, str]:
        """Upstream name -> key from `shadow.replay_key_env`, from the injected environment."""
        return self._replay_keys

    @property
    def shadow(self) -> Mapping[str, Any]:
        """The `shadow:` section as the sources set it (read-only; for reference):
        `shadow_config` is the validated value every consumer uses."""
        return MappingProxyType(self.shadow_config.model_dump(exclude_unset=True))

    def upstream(self, name: str) -> UpstreamConfig:
        for upstream in self.upstreams:
            if upstream.name == name:
                return upstream
        raise KeyError(name)


def _split_keys(raw: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in raw.split(",") if k.strip())


def reference_tables() -> str:
    """The field tables of docs/configuration.md, from the schema (see proxy.schema_doc)."""
    from proxy.schema_doc import tables

    return tables(Config)


if __name__ == "__main__":
    print(reference_tables(), end="")
