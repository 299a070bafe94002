"""Config: file < env < flags; errors name the field; `tbg serve` exits 2 on bad config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

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


def test_shadow_section_is_validated_at_load_with_cross_field_checks() -> None:
    up = {"name": "a", "base_url": "http://127.0.0.1:9/v1", "models": ["m"]}
    with pytest.raises(ConfigError, match=r"^shadow\.sample_rate: "):
        build_config({"upstreams": [up], "shadow": {"sample_rate": 2}}, {})
    with pytest.raises(ConfigError, match=r"^shadow\.models\.mm: no upstream serves"):
        build_config({"upstreams": [up], "shadow": {"models": {"mm": {"sample_rate": 1}}}}, {})
    with pytest.raises(ConfigError, match=r"^shadow\.replay_key_env\.a: environment variable K"):
        build_config({"upstreams": [up], "shadow": {"replay_key_env": {"a": "K"}}}, {})
    cfg = build_config({"upstreams": [up], "shadow": {"enabled": True, "replay_key_env": {"a": "K"}}},
                       {"K": "sk-replay"})  # fmt: skip
    assert cfg.shadow_settings.enabled and dict(cfg.replay_keys) == {"a": "sk-replay"}
    assert "sk-replay" not in repr(cfg)
