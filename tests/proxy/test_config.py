"""Config: file < env < flags; errors name the field; `tbg serve` exits 2 on bad config."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import ConfigError, Overrides, Timeouts, build_config, load_config
from proxy.serve import main as serve_main

BASE: dict[str, Any] = {
    "upstreams": [
        {"name": "a", "base_url": "http://127.0.0.1:8000/v1", "models": ["m1"]},
        {
            "name": "b",
            "base_url": "https://api.example.com/v1/",
            "models": ["m2"],
            "api_key_env": "B_KEY",
            "timeouts": {"connect": 1, "first_byte": 2, "total": None},
        },
    ],
    "default_upstream": "b",
    "shadow": {"enabled": True, "sample_rate": 0.5},
}
ENV = {"B_KEY": "sk-b"}


def test_full_file_is_parsed_into_frozen_values() -> None:
    config = build_config(BASE, ENV)
    a, b = config.upstreams
    assert (a.auth, a.api_key, a.timeouts) == ("passthrough", None, Timeouts())
    assert (b.auth, b.api_key, b.base_url) == ("inject", "sk-b", "https://api.example.com/v1")
    assert b.timeouts == Timeouts(connect=1.0, first_byte=2.0, total=None)
    assert config.default_upstream == "b"
    assert dict(config.shadow) == {"enabled": True, "sample_rate": 0.5}
    with pytest.raises(TypeError):
        config.shadow["enabled"] = False  # type: ignore[index]
    assert "sk-b" not in repr(config)  # secrets stay out of reprs and logs
    assert (config.host, config.port, config.max_body_bytes) == ("127.0.0.1", 8080, 8 * 1024**2)


def test_flags_override_env_override_file(tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(
        "port: 9000\nhost: 127.0.0.2\nupstreams:\n"
        "  - {name: a, base_url: 'http://127.0.0.1:1/v1'}\n"
    )
    env = {"TBG_PORT": "9100", "TBG_DRAIN_SECONDS": "3"}
    config = load_config(Overrides(config_file=str(path), port=9200), env)
    assert (config.port, config.host, config.drain_seconds) == (9200, "127.0.0.2", 3.0)
    config = load_config(Overrides(config_file=str(path)), env)
    assert config.port == 9100


def test_upstream_flag_alone_is_enough_and_replaces_file_upstreams() -> None:
    config = load_config(Overrides(upstreams=("http://127.0.0.1:8000/v1",)), {})
    (only,) = config.upstreams
    assert (only.name, only.base_url, only.auth) == (
        "default",
        "http://127.0.0.1:8000/v1",
        "passthrough",
    )
    assert config.default_upstream == "default"
    env = {"TBG_UPSTREAM": "x=http://127.0.0.1:1/v1,y=http://127.0.0.1:2/v1"}
    assert [u.name for u in load_config(Overrides(), env).upstreams] == ["x", "y"]


def test_proxy_api_keys_come_from_the_named_env_var() -> None:
    config = build_config({**BASE, "api_keys_env": "PROXY_KEYS"}, {**ENV, "PROXY_KEYS": "k1, k2"})
    assert config.api_keys == ("k1", "k2")
    assert "k1" not in repr(config)


def _with(path: str, value: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"upstreams": [dict(u) for u in BASE["upstreams"]]}
    target: Any = data
    keys = path.split(".")
    for key in keys[:-1]:
        target = target[int(key)] if key.isdigit() else target[key]
    target[keys[-1]] = value
    return data


@pytest.mark.parametrize(
    ("data", "env", "field"),
    [
        ({"upstreams": []}, {}, "upstreams:"),
        ({}, {}, "upstreams:"),
        ({**BASE, "colour": "red"}, ENV, "colour: unknown field"),
        (_with("upstreams.1.base_url", "ftp://x"), ENV, "upstreams[1].base_url:"),
        (_with("upstreams.0.base_url", "not a url"), ENV, "upstreams[0].base_url:"),
        (_with("upstreams.1.name", "a"), ENV, "upstreams[1].name: duplicate"),
        (_with("upstreams.1.models", ["m1"]), ENV, "upstreams[1].models[0]: model 'm1'"),
        (_with("upstreams.0.timeout", 3), ENV, "upstreams[0].timeout: unknown field"),
        (_with("upstreams.1.timeouts", {"connect": -1}), ENV, "upstreams[1].timeouts.connect:"),
        (_with("upstreams.0.auth", "magic"), ENV, "upstreams[0].auth:"),
        (_with("upstreams.0.auth", "inject"), ENV, "upstreams[0].auth: 'inject' needs"),
        (BASE, {}, "upstreams[1].api_key_env: environment variable B_KEY is not set"),
        ({**BASE, "default_upstream": "zz"}, ENV, "default_upstream: no upstream is named 'zz'"),
        ({**BASE, "port": "http"}, ENV, "port:"),
        ({**BASE, "max_body_bytes": 0}, ENV, "max_body_bytes:"),
        ({**BASE, "api_keys_env": "NOPE"}, ENV, "api_keys_env: environment variable NOPE"),
        ({**BASE, "shadow": [1]}, ENV, "shadow:"),
    ],
)
def test_bad_config_names_the_field(data: dict[str, Any], env: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(data, env)
    assert str(info.value).startswith(field) or field in str(info.value), str(info.value)
    assert str(info.value).split(":")[0] == field.split(":")[0]


def test_serve_exits_2_with_the_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("upstreams:\n  - {name: a, base_url: 'http://127.0.0.1:1/v1', colour: red}\n")
    assert serve_main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "upstreams[0].colour: unknown field" in err
    assert serve_main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_tbg_serve_bad_config_has_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("upstreams:\n  - {name: a, base_url: 'gopher://x'}\n")
    done = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "upstreams[0].base_url:" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("shadow", "field"),
    [
        ({"sample_rate": 2}, "shadow.sample_rate"),
        ({"replays": "many"}, "shadow.replays"),
        ({"models": {"typo": {"sample_rate": 1.0}}}, "shadow.models.typo"),
        ({"replay_key_env": {"nope": "X"}}, "shadow.replay_key_env.nope"),
        ({"replay_key_env": {"a": "UNSET_IN_INJECTED_ENV"}}, "shadow.replay_key_env.a"),
        ({"bogus": 1}, "shadow.bogus"),
    ],
)
def test_bad_shadow_value_exits_2_naming_the_field(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    shadow: dict[str, Any],
    field: str,
) -> None:
    """The shadow section is validated by load_config with the rest: no traceback, status 2."""
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump({**BASE, "default_upstream": "a", "shadow": shadow}))
    env = {"B_KEY": "sk-b"}
    with pytest.raises(ConfigError, match=rf"^{field}: "):
        load_config(Overrides(config_file=str(path)), env)
    monkeypatch.setenv("B_KEY", "sk-b")
    assert serve_main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tbg serve: config error: {field}: ") and "Traceback" not in err


def test_replay_keys_come_from_the_injected_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPLAY_KEY", "sk-from-os-environ")
    data = {**BASE, "shadow": {"replay_key_env": {"a": "REPLAY_KEY"}}}
    with pytest.raises(ConfigError, match=r"shadow.replay_key_env.a: environment variable"):
        build_config(data, ENV)  # os.environ is not consulted
    config = build_config(data, {**ENV, "REPLAY_KEY": "sk-r"})
    assert dict(config.replay_keys) == {"a": "sk-r"}
    assert "sk-r" not in repr(config)


@pytest.mark.parametrize("spell", [int, float, str, lambda n: f" {n} "])
def test_integers_follow_one_rule_in_every_section(spell: Any) -> None:
    """8081, 8081.0 and "8081" mean the same in the core and in `shadow:` alike."""
    config = build_config({**BASE, "port": spell(8081), "shadow": {"replays": spell(8)}}, ENV)
    assert (config.port, config.shadow_config.replays) == (8081, 8)


@pytest.mark.parametrize("bad", [8081.5, "8081.5", True, "x", None])
def test_non_integers_are_refused_in_every_section(bad: Any) -> None:
    with pytest.raises(ConfigError, match=r"^port: "):
        build_config({**BASE, "port": bad}, ENV)
    with pytest.raises(ConfigError, match=r"^shadow.replays: "):
        build_config({**BASE, "shadow": {"replays": bad}}, ENV)


def test_per_model_override_applies_to_a_configured_model() -> None:
    config = build_config({**BASE, "shadow": {"models": {"m2": {"sample_rate": 1.0}}}}, ENV)
    assert config.shadow_config.policy("m2").sample_rate == 1.0


def test_quick_start_flags_declare_models_and_turn_replay_on() -> None:
    url = "http://127.0.0.1:8000/v1"
    plain = load_config(Overrides(upstreams=(url,)), {})
    assert not plain.shadow_config.enabled
    named = load_config(Overrides(upstreams=(url,), models=("m",)), {}).shadow_config
    assert named.enabled and (named.defaults.sample_rate, named.replays) == (0.1, 2)  # measured
    config = load_config(
        Overrides(upstreams=(url,), models=("m",), sample_rate="0.5", replays="3", ceiling="0.1"),
        {},
    )
    assert config.upstreams[0].models == ("m",)
    shadow = config.shadow_config
    assert (shadow.enabled, shadow.defaults.sample_rate, shadow.replays) == (True, 0.5, 3)
    assert shadow.defaults.ceiling == 0.1
    with pytest.raises(ConfigError, match=r"^shadow.sample_rate: "):
        load_config(Overrides(upstreams=(url,), sample_rate="2"), {})
    with pytest.raises(ConfigError, match=r"^--model: needs exactly one --upstream"):
        load_config(Overrides(models=("m",)), {"TBG_CONFIG": ""})
    with pytest.raises(ConfigError, match=r"^--model: "):
        load_config(Overrides(upstreams=(url, "b=" + url), models=("m",)), {})


def test_quick_start_flags_through_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--upstream", "http://127.0.0.1:1/v1", "--sample-rate", "1.5"]
    assert serve_main(argv) == 2
    assert "config error: shadow.sample_rate: " in capsys.readouterr().err


DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_docs_example_file_validates() -> None:
    text = DOC.read_text(encoding="utf-8")
    example = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = build_config(
        yaml.safe_load(example),
        {"HOSTED_API_KEY": "sk-h", "HOSTED_REPLAY_KEY": "sk-r", "TBG_API_KEYS": "k"},
    )
    assert config.shadow_config.enabled and config.shadow_config.policy("smollm2").sample_rate == 1


def test_docs_field_tables_are_the_schema() -> None:
    """docs/configuration.md holds exactly what `python -m proxy.schema` prints."""
    from proxy.schema import reference_tables
    from proxy.schema_doc import BEGIN, END

    text = DOC.read_text(encoding="utf-8")
    assert BEGIN in text and END in text
    documented = BEGIN + text.split(BEGIN, 1)[1].split(END, 1)[0] + END + "\n"
    assert documented == reference_tables(), "regenerate: python -m proxy.schema"


def test_docs_tables_name_every_field_a_file_may_set() -> None:
    """Walk the schema itself: every field path a file can hold is a row of the tables."""
    from proxy.schema import Config
    from proxy.validation import Section

    def paths(model: type[Section], prefix: str) -> set[str]:
        found: set[str] = set()
        for name, info in model.model_fields.items():
            key = info.alias or name  # the file's key (`shadow` for `shadow_config`)
            found.add(prefix + key)
            inner = info.annotation
            args = getattr(inner, "__args__", ())
            if isinstance(inner, type) and issubclass(inner, Section):
                found |= paths(inner, f"{prefix}{key}.")
            elif args and isinstance(args[0], type) and issubclass(args[0], Section):
                found |= paths(args[0], f"{prefix}{key}[i].")
        return found

    text = DOC.read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `([^`]+)` \|", text, flags=re.MULTILINE))
    expected = paths(Config, "")
    assert len(expected) > 40 and expected <= documented, sorted(expected - documented)


def test_every_bad_field_is_reported_at_once() -> None:
    data = {
        **BASE,
        "port": 70000,
        "colour": "red",
        "shadow": {"sample_rate": 2, "half_life_comparisons": 5, "replays": True},
    }
    with pytest.raises(ConfigError) as info:
        build_config(data, ENV)
    lines = str(info.value).splitlines()
    fields = {line.split(": ")[0] for line in lines}
    assert {"port", "colour", "shadow.sample_rate", "shadow.replays"} <= fields, lines
    assert any(
        line.startswith("shadow.half_life_comparisons: renamed to half_life_trials")
        for line in lines
    )
    assert "port: must be <= 65535, got 70000" in lines


def test_schema_defaults_are_the_dataclass_defaults() -> None:
    """A minimal file gives the same values as the dataclasses' own defaults (one source of
    truth would drift silently otherwise)."""
    from proxy.config import Config, Timeouts, UpstreamConfig
    from proxy.shadow.config import ShadowConfig, parse_shadow_config

    config = build_config({"upstreams": [{"name": "a", "base_url": "http://h/v1"}]}, {})
    plain = Config(
        upstreams=(UpstreamConfig(name="a", base_url="http://h/v1"),), default_upstream="a"
    )
    assert config == plain
    assert config.upstreams[0].timeouts == Timeouts()
    assert parse_shadow_config({"enabled": False}) == ShadowConfig()


@pytest.mark.parametrize(
    ("source", "value"),
    [("file", {"client_keepalive_seconds": 5}), ("env", {"TBG_CLIENT_KEEPALIVE_SECONDS": "5"})],
)
def test_client_keepalive_is_a_config_field(source: str, value: dict[str, Any]) -> None:
    data = {**BASE, **value} if source == "file" else BASE
    env = {**ENV, **value} if source == "env" else ENV
    assert build_config(data, env).client_keepalive_seconds == 5.0
    assert build_config(BASE, ENV).client_keepalive_seconds == 75.0
    with pytest.raises(ConfigError, match=r"^client_keepalive_seconds: must be > 0"):
        build_config({**BASE, "client_keepalive_seconds": 0}, ENV)


def test_the_removed_upstream_client_setting_is_refused_wherever_it_is_set() -> None:
    """One upstream client: a file, variable or flag that still picks one fails at start, saying
    what to do, whatever value it names."""
    assert build_config(BASE, ENV).upstream_client == "lean"
    removed = r"^upstream_client: removed: the proxy has one upstream client; delete the setting"
    for value in ("lean", "aiohttp", "curl"):
        with pytest.raises(ConfigError, match=removed):
            build_config({**BASE, "upstream_client": value}, ENV)
        with pytest.raises(ConfigError, match=removed):
            build_config(BASE, {**ENV, "TBG_UPSTREAM_CLIENT": value})
        with pytest.raises(ConfigError, match=removed):
            build_config(BASE, ENV, Overrides(upstream_client=value))
