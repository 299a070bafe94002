"""One declaration per config field: its TBG_* variable, its `tbg serve` flag and the flag's help
(default included) all come from the schema's field, and the models are the runtime values."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from pydantic import ValidationError
from pydantic_core import PydanticUndefined

from proxy.config import KNOBS, Config, ConfigError, Overrides, build_config
from proxy.schema import UpstreamConfig
from proxy.serve import build_parser, overrides_from
from proxy.shadow.config import ModelPolicy, ShadowConfig
from proxy.sources import Knob, default_of, show

UP = {"name": "a", "base_url": "http://127.0.0.1:1/v1"}
TWO = [UP, {"name": "b", "base_url": "http://127.0.0.1:2/v1"}]


def _field_value(config: Config, knob: Knob) -> Any:
    value: Any = config
    for part in knob.path:
        value = value.shadow_config if part == "shadow" else getattr(value, part)
    return value


def _other(knob: Knob) -> str:
    """A valid value that differs from the field's default, as a variable or flag spells it."""
    default = default_of(knob.info)
    choices = getattr(knob.info.annotation, "__args__", ())
    if choices and all(isinstance(c, str) for c in choices):
        return next(c for c in choices if c != default)
    if knob.dest == "api_keys_env":
        return "PROXY_KEYS"
    if knob.dest in ("host", "default_upstream"):
        return {"host": "127.0.0.2", "default_upstream": "b"}[knob.dest]
    if knob.dest == "sample_rate":
        return "0.5"
    if knob.dest == "ceiling":
        return "0.5"
    return str(int(default) + 1)


def test_the_tables_cover_the_documented_variables_and_flags() -> None:
    envs = {k.env for k in KNOBS if k.env}
    flags = {k.flag.name for k in KNOBS if k.flag}
    assert {"TBG_PORT", "TBG_SHADOW_WORKER", "TBG_SHADOW_WORKER_NICE", "TBG_LOG_LEVEL"} <= envs
    assert {"--port", "--sample-rate", "--replays", "--ceiling", "--upstream-client"} <= flags
    assert len(envs) == 14 and len(flags) == 11, (sorted(envs), sorted(flags))


# upstream_client is declared only to refuse it (test_config.py covers that)
SETTABLE = [k for k in KNOBS if k.dest != "upstream_client"]


@pytest.mark.parametrize("knob", [k for k in SETTABLE if k.env], ids=lambda k: k.env)
def test_every_variable_sets_its_field(knob: Knob) -> None:
    assert knob.env is not None
    value = _other(knob)
    environ = {knob.env: value, "PROXY_KEYS": "k"}
    config = build_config({"upstreams": TWO}, environ)
    default = default_of(knob.info)
    expected = value if default is None or isinstance(default, str) else type(default)(value)
    assert _field_value(config, knob) == expected
    unset = _field_value(build_config({"upstreams": TWO}, {knob.env: ""}), knob)
    assert unset == ("a" if knob.dest == "default_upstream" else default)  # empty = unset
    if knob.path[0] == "shadow":  # TBG_SHADOW_* variables set a field, replay stays off
        assert not config.shadow_config.enabled


@pytest.mark.parametrize("knob", [k for k in SETTABLE if k.flag], ids=lambda k: k.dest)
def test_every_flag_sets_its_field_over_the_variable(knob: Knob) -> None:
    assert knob.flag is not None
    value = _other(knob)
    args = build_parser().parse_args(["--upstream", UP["base_url"], knob.flag.name, value])
    environ = {"PROXY_KEYS": "k", **({knob.env: "junk"} if knob.env else {})}
    config = build_config({}, environ, overrides_from(args))
    got = _field_value(config, knob)
    assert got == (value if isinstance(got, str) else type(got)(value))
    if knob.path[0] == "shadow":  # a quick-start flag measures
        assert config.shadow_config.enabled


def test_help_shows_each_flag_with_the_field_default() -> None:
    text = " ".join(build_parser().format_help().split())
    for knob in KNOBS:
        if knob.flag is None:
            continue
        assert knob.flag.name in text
        default = default_of(knob.info)
        if default is not None and default is not PydanticUndefined:
            assert f"(default {show(default)})" in text, knob.dest
        if knob.env:
            assert f"env {knob.env}" in text


def test_overrides_accept_only_flag_fields() -> None:
    assert dict(Overrides(port=0, sample_rate=None).values) == {"port": 0}
    with pytest.raises(TypeError, match="no flag sets colour"):
        Overrides(colour="red")


def test_bad_flag_and_variable_values_name_the_field_together() -> None:
    overrides = Overrides(upstreams=(UP["base_url"],), port="x", replays="0")
    with pytest.raises(ConfigError) as info:
        build_config({}, {"TBG_MAX_CONNECTIONS": "0"}, overrides)
    fields = {line.split(":")[0] for line in str(info.value).splitlines()}
    assert fields == {"port", "max_connections", "shadow.replays"}


def test_models_are_the_runtime_values() -> None:
    """Frozen, unknown keys refused, bounds kept when built in code; secrets only in private
    attributes (out of reprs, dumps and equality with a file that names no key)."""
    config = build_config(
        {"upstreams": [{**UP, "api_key_env": "K"}], "api_keys_env": "P"}, {"K": "sk-u", "P": "k1"}
    )
    assert (config.upstreams[0].api_key, config.api_keys) == ("sk-u", ("k1",))
    dumped = repr(config) + str(config.model_dump())
    assert "sk-u" not in dumped and "k1" not in dumped
    with pytest.raises(ValidationError):
        config.port = 1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        ShadowConfig(replays=0)
    with pytest.raises(ValidationError):
        ModelPolicy(sampel_rate=0.1)  # type: ignore[call-arg]
    # Built in code, nothing is read from an environment: the key stays unresolved.
    assert UpstreamConfig(name="a", base_url=UP["base_url"], api_key_env="K").api_key is None
    with pytest.raises(ConfigError, match=r"^upstreams\[0\]\.api_key: unknown field"):
        build_config({"upstreams": [{**UP, "api_key": "sk"}]}, {})  # keys never live in the file
    with pytest.raises(ConfigError, match=r"^shadow_config: unknown field"):
        build_config({"upstreams": [UP], "shadow_config": {}}, {})  # the file says `shadow:`
    built = Config(upstreams=(UpstreamConfig(**UP),), shadow=ShadowConfig(replays=3))
    assert built.shadow_config.replays == 3 and built.default_upstream == "a"


def test_policy_defaults_and_per_model_inheritance() -> None:
    shadow = ShadowConfig(defaults=ModelPolicy(sample_rate=0.3), models={"m": ModelPolicy()})
    assert shadow.defaults == ModelPolicy(sample_rate=0.3) == shadow.policy("other")
    assert shadow.policy("m") == ModelPolicy()
    config = build_config({"upstreams": [UP], "shadow": {"ceiling": 0.2, "models": {"m": {}}}}, {})
    assert config.shadow_config.policy("m").ceiling == 0.2  # inherited from the section
    with pytest.raises(TypeError):
        config.shadow_config.models["x"] = ModelPolicy()  # type: ignore[index]


def test_the_config_pickles_for_the_shadow_worker() -> None:
    from proxy.shadow.channel import frame

    config = build_config(
        {"upstreams": [{**UP, "api_key_env": "K"}], "shadow": {"replay_key_env": {"a": "R"}}},
        {"K": "sk-u", "R": "sk-r"},
    )
    data = frame((config,))
    (back,) = pickle.loads(data[4:])
    assert back == config and back.replay_keys == {"a": "sk-r"}
    assert back.upstreams[0].api_key == "sk-u"
