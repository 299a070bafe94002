"""The config file's schema: one pydantic model per section, the `shadow:` section included.

`FileSchema.model_validate(merged, context={"environ": env})` is the one pass that checks every
field and every cross-field rule; `proxy.config.build_config` merges the sources before it and
turns the result into the frozen dataclasses the rest of the proxy reads. Field descriptions here
are the reference tables of docs/configuration.md (`python -m proxy.schema` prints them; a test
keeps the two equal).

Why pydantic (v2) and not msgspec: it is already installed with tbg-proxy (the `openai` runtime
dependency requires it), it reports every bad field in one pass, and its error locations map one to
one onto our `path.to.field: ...` messages; msgspec stops at the first error and would be a new
dependency. Its import cost (≈ 0.2 s) is paid once per start.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from proxy.shadow.config import ShadowSchema
from proxy.validation import Int, Number, Section, Text, field_error

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_DRAIN_SECONDS = 30.0
DEFAULT_CLIENT_KEEPALIVE = 75.0  # nginx's default keepalive_timeout
DEFAULT_CLIENT_BODY_TIMEOUT = 60.0  # nginx's client_body_timeout (here: for the whole body)
DEFAULT_CLIENT_WRITE_TIMEOUT = 60.0  # nginx's send_timeout
DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_FIRST_BYTE_TIMEOUT = 300.0
DEFAULT_TOTAL_TIMEOUT = 900.0

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


def _environ(info: ValidationInfo) -> Mapping[str, str]:
    context = info.context or {}
    environ: Mapping[str, str] = context.get("environ", {})
    return environ


Name = Annotated[Text, AfterValidator(_name)]
Url = Annotated[Text, AfterValidator(_url)]
Seconds = Annotated[Number, Field(gt=0.0)]


class TimeoutsSchema(Section):
    """`upstreams[i].timeouts`, seconds."""

    connect: Seconds = Field(DEFAULT_CONNECT_TIMEOUT, description="TCP/TLS connect")
    first_byte: Seconds = Field(
        DEFAULT_FIRST_BYTE_TIMEOUT, description="request sent -> response headers; exceeded: 504"
    )
    total: Seconds | None = Field(
        DEFAULT_TOTAL_TIMEOUT,
        description="the whole exchange incl. a streamed body; `null`: no limit",
    )


class UpstreamSchema(Section):
    """`upstreams[i]`: one OpenAI-compatible upstream."""

    name: Name = Field(description="metric label and routing name; unique")
    base_url: Url = Field(
        description="OpenAI base URL (`http://host:8000/v1`); the proxy appends the path after "
        "`/v1` and the client's query string"
    )
    api_key_env: Text | None = Field(
        None, description="env var holding the upstream's key; a missing variable is an error"
    )
    auth: AuthMode | None = Field(
        None,
        description="`inject` sends `Authorization: Bearer <key>` (the default when "
        "`api_key_env` is set); `passthrough` forwards the client's header unchanged",
    )
    timeouts: TimeoutsSchema = Field(TimeoutsSchema(), description="seconds")
    models: list[Text] = Field(
        default_factory=list,
        description="models served, routed by the body's `model`; a model listed under two "
        "upstreams is an error; unlisted models go to `default_upstream` (label `other`)",
    )

    @field_validator("api_key_env")
    @classmethod
    def _key_is_set(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and value not in _environ(info):
            raise ValueError(f"environment variable {value} is not set")
        return value

    @model_validator(mode="after")
    def _inject_needs_a_key(self) -> UpstreamSchema:
        if self.auth == "inject" and self.api_key_env is None:
            raise field_error("auth", "'inject' needs api_key_env")
        return self

    @property
    def auth_mode(self) -> AuthMode:
        if self.auth is not None:
            return self.auth
        return "inject" if self.api_key_env else "passthrough"


class FileSchema(Section):
    """The whole config file (after `TBG_*` variables and flags are merged into it)."""

    host: Text = Field(DEFAULT_HOST, description="listen address")
    port: Annotated[Int, Field(ge=0, le=65535)] = Field(DEFAULT_PORT, description="listen port")
    max_body_bytes: Annotated[Int, Field(ge=1)] = Field(
        DEFAULT_MAX_BODY_BYTES,
        description="larger request bodies are refused with 413 before anything reaches an "
        "upstream",
    )
    drain_seconds: Annotated[Number, Field(ge=0.0)] = Field(
        DEFAULT_DRAIN_SECONDS, description="graceful shutdown deadline for in-flight requests"
    )
    client_keepalive_seconds: Seconds = Field(
        DEFAULT_CLIENT_KEEPALIVE,
        description="an idle client connection, or a request head still arriving (slowloris), "
        "is closed this long after the connection opened or its previous response ended",
    )
    client_body_timeout_seconds: Seconds = Field(
        DEFAULT_CLIENT_BODY_TIMEOUT,
        description="a request body must arrive in full within this long after its head; "
        "slower: 408 and the connection is closed",
    )
    client_write_timeout_seconds: Seconds = Field(
        DEFAULT_CLIENT_WRITE_TIMEOUT,
        description="a response write that waits this long for a client that does not read is "
        "abandoned: the connection is closed and the upstream request cancelled",
    )
    max_connections: Annotated[Int, Field(ge=1)] = Field(
        DEFAULT_MAX_CONNECTIONS,
        description="open client connections; one more is answered 503 and closed",
    )
    upstream_client: Annotated[UpstreamClient, BeforeValidator(_client_removed)] = Field(
        "lean",
        description="removed (any value is an error at start): every upstream request goes "
        "through the one keep-alive HTTP/1.1 client",
    )
    log_level: Annotated[LogLevel, BeforeValidator(_upper)] = Field(
        "INFO", description="JSON log level (any case)"
    )
    api_keys_env: Text | None = Field(
        None,
        description="env var with the proxy's own API keys (comma-separated); set: every "
        "`/v1/*` request needs `Authorization: Bearer <one of them>`",
    )
    default_upstream: Text | None = Field(
        None,
        description="target for unlisted models and model-less paths; default: the first upstream",
    )
    upstreams: list[UpstreamSchema] = Field(
        min_length=1, description="the upstreams (required unless `--upstream` is given)"
    )
    shadow: ShadowSchema = Field(
        ShadowSchema(),
        description="shadow replay, the section below; absent: replay off",
    )

    @field_validator("api_keys_env")
    @classmethod
    def _keys_are_set(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        environ = _environ(info)
        if value not in environ:
            raise ValueError(f"environment variable {value} is not set")
        if not any(k.strip() for k in environ[value].split(",")):
            raise ValueError(f"environment variable {value} holds no keys")
        return value

    @model_validator(mode="after")
    def _cross_field(self, info: ValidationInfo) -> FileSchema:
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
        if self.default_upstream is not None and self.default_upstream not in names:
            raise field_error("default_upstream", f"no upstream is named {self.default_upstream!r}")
        if served:  # with no model lists every upstream serves any name: nothing to check
            for model in self.shadow.models:
                if model not in served:
                    raise field_error(
                        f"shadow.models.{model}",
                        f"no upstream serves model {model!r} "
                        f"(configured: {', '.join(sorted(served))})",
                    )
        environ = _environ(info)
        for upstream_name, env in self.shadow.replay_key_env.items():
            where = f"shadow.replay_key_env.{upstream_name}"
            if upstream_name not in names:
                raise field_error(where, f"no upstream named {upstream_name!r}")
            if not environ.get(env):
                raise field_error(where, f"environment variable {env} is not set")
        return self


def reference_tables() -> str:
    """The field tables of docs/configuration.md, from the schema (see proxy.schema_doc)."""
    from proxy.schema_doc import tables

    return tables(FileSchema)


if __name__ == "__main__":
    print(reference_tables(), end="")
